"""Pure-PyTorch reference of ``token_patch_embed``: the first patchwise layer straight from token ids.

tokens [B, T] (uint8/int16/int32/int64, values in [0, v)); table [s, v, C_out], table[k, t] being
what token t at patch position k contributes (= column k*v + t of the patch_conv weight on one-hot
input). Output [B, T/s, C_out] = act(scale * sum_k table[k, tokens[b, j*s + k]] + bias + pos_bias[j]).

Replica form: tokens [K, B, T], table [K, s, v, C_out], bias [K, C_out], pos_bias [K, T/s, C_out], output
[K, B, T/s, C_out]: replica k is the solo layer on replica k's slices (chosen by tokens 3-D or table 4-D).
"""
from __future__ import annotations

import torch

from rhmfast import _backend
from rhmfast.reference.patch_conv import (check_activation, check_biases, check_float, check_patch_size,
                                          check_replica_pair, finish)

TOKEN_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)


def check_token_patch_embed_args(tokens, table, bias, pos_bias, patch_size, *, with_replicas: bool = False):
    """Validates the arguments (not the token values); returns (B, T, v, T_out, C_out), with K (None in the
    solo form) in front when with_replicas."""
    if tokens.dtype not in TOKEN_DTYPES:
        raise TypeError(f"rhmfast: tokens must be uint8, int16, int32 or int64, got {tokens.dtype}")
    check_float(table, "table")
    if tokens.device != table.device:
        raise ValueError(f"rhmfast: tokens are on {tokens.device} but table is on {table.device}")
    replicas = None
    if tokens.dim() == 3 or table.dim() == 4:
        replicas = check_replica_pair(tokens, "tokens", "[K, B, T]", table, "table",
                                      "[K, patch_size, vocab_size, C_out]")
    else:
        if tokens.dim() != 2:
            raise ValueError(f"rhmfast: tokens must have shape [B, T], got {list(tokens.shape)}")
        if table.dim() != 3:
            raise ValueError(f"rhmfast: table must have shape [patch_size, vocab_size, C_out], got "
                             f"{list(table.shape)}")
    s, vocab, c_out = table.shape[-3:]
    if s != patch_size:
        raise ValueError(f"rhmfast: table has {s} patch positions but patch_size is {patch_size}")
    if vocab < 1:
        raise ValueError("rhmfast: table must have vocab_size >= 1")
    batch, length = tokens.shape[-2:]
    t_out = check_patch_size(patch_size, length)
    check_biases(bias, pos_bias, table, "table", t_out, c_out, replicas)
    dims = (batch, length, vocab, t_out, c_out)
    return (replicas, *dims) if with_replicas else dims


def check_token_values(tokens: torch.Tensor, vocab_size: int) -> None:
    """Eager-mode range check. Data-dependent, so skipped while torch.compile traces and inside torch.func
    transforms, where an out-of-range id still fails, in the table lookup (never a read out of bounds)."""
    if tokens.numel() == 0 or torch.compiler.is_compiling() or _backend.in_func_transform():
        return
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"rhmfast: token ids must be in [0, vocab_size={vocab_size}), got {bad}")


def token_patch_embed(tokens, table, bias=None, pos_bias=None, *, patch_size: int, scale: float = 1.0,
                      activation: str = "none") -> torch.Tensor:
    check_activation(activation)
    replicas, batch, _, vocab, t_out, _ = check_token_patch_embed_args(tokens, table, bias, pos_bias, patch_size,
                                                                       with_replicas=True)
    check_token_values(tokens, vocab)
    if replicas is not None:
        ids = tokens.long().reshape(replicas, batch, t_out, patch_size)
        replica = torch.arange(replicas, device=tokens.device)[:, None, None, None]
        position = torch.arange(patch_size, device=tokens.device)
        gathered = table[replica, position, ids]  # [K, B, T_out, s, C_out]
        return finish(gathered.sum(dim=3), bias, pos_bias, scale, activation)
    ids = tokens.long().reshape(batch, t_out, patch_size)
    position = torch.arange(patch_size, device=tokens.device)
    gathered = table[position, ids]  # [B, T_out, s, C_out]
    return finish(gathered.sum(dim=2), bias, pos_bias, scale, activation)
