"""``token_patch_embed``: the first patchwise layer straight from token ids, as a gather-sum of s table
rows per output position (equal to ``patch_conv`` on the one-hot input). Dispatcher op with fake kernel
(here) and autograd (in C++, csrc/token_patch_embed_autograd.cpp; backward op
``token_patch_embed_backward``, deterministic table gradient), or the pure-PyTorch reference without the
extension.
"""
from __future__ import annotations

import torch

from rhmfast.ops._kernels import op_registered, use_kernel
from rhmfast.reference import token_patch_embed as reference
from rhmfast.reference.patch_conv import check_activation, check_layer_backward_args, new_replica_result


_REGISTERED = op_registered("token_patch_embed")

def token_patch_embed(tokens: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None = None,
                      pos_bias: torch.Tensor | None = None, *, patch_size: int, scale: float = 1.0,
                      activation: str = "none") -> torch.Tensor:
    """y[b, j] = act(scale * sum_k table[k, tokens[b, j*s + k]] + bias + pos_bias[j]).

    tokens [B, T] uint8/int16/int32/int64 with values in [0, v); table [patch_size, v, C_out];
    bias [C_out]; pos_bias [T/s, C_out]. Returns a contiguous [B, T/s, C_out]. Out-of-range ids raise
    ValueError (in eager mode; the compiled kernels also check under torch.compile).

    Replica form (K independent layers in one call): tokens [K, B, T], table [K, patch_size, v, C_out],
    bias [K, C_out], pos_bias [K, T/s, C_out] -> [K, B, T/s, C_out], replica k equal (on the CPU, bit for
    bit) to the solo call on replica k's slices; gradients of the same shapes as the parameters. Chosen by
    tokens 3-D or table 4-D; mixed forms and differing K raise ValueError. Each replica slice of a result
    is contiguous and 64-byte aligned (stride(0) padded where a replica's size is not a multiple of 64 bytes).
    """
    if use_kernel(_REGISTERED, table):
        return torch.ops.rhmfast.token_patch_embed(tokens, table, bias, pos_bias, patch_size, float(scale), activation)
    return reference.token_patch_embed(tokens, table, bias, pos_bias, patch_size=patch_size, scale=scale,
                                       activation=activation)


def _result(like, replicas, shape):
    """A fake result: the solo form's contiguous tensor, or the replica form's layout (K in front)."""
    return like.new_empty(shape) if replicas is None else new_replica_result(like, (replicas, *shape))


def _fake(tokens, table, bias, pos_bias, patch_size, scale, activation):
    check_activation(activation)
    replicas, batch, _, _, t_out, c_out = reference.check_token_patch_embed_args(tokens, table, bias, pos_bias,
                                                                                 patch_size, with_replicas=True)
    return _result(table, replicas, (batch, t_out, c_out))


def _fake_backward(grad_out, tokens, table, bias, pos_bias, out, patch_size, scale, activation, output_mask):
    replicas, batch, _, _, t_out, c_out = reference.check_token_patch_embed_args(tokens, table, bias, pos_bias,
                                                                                 patch_size, with_replicas=True)
    lead = () if replicas is None else (replicas,)
    check_layer_backward_args(grad_out, table, lead + (batch, t_out, c_out), activation, out, relu_recomputes=True,
                              biases=(bias, pos_bias), output_mask=output_mask)
    shapes = (tuple(table.shape[-3:]), (c_out,), (t_out, c_out))
    return tuple(_result(table, replicas, shape) if wanted else table.new_empty((0,))
                 for shape, wanted in zip(shapes, output_mask))


if _REGISTERED:
    torch.library.register_fake("rhmfast::token_patch_embed")(_fake)
    torch.library.register_fake("rhmfast::token_patch_embed_backward")(_fake_backward)
