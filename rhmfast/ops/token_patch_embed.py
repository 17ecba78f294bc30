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
from rhmfast.reference.patch_conv import check_activation, check_layer_backward_args


_REGISTERED = op_registered("token_patch_embed")

def token_patch_embed(tokens: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None = None,
                      pos_bias: torch.Tensor | None = None, *, patch_size: int, scale: float = 1.0,
                      activation: str = "none") -> torch.Tensor:
    """y[b, j] = act(scale * sum_k table[k, tokens[b, j*s + k]] + bias + pos_bias[j]).

    tokens [B, T] uint8/int16/int32/int64 with values in [0, v); table [patch_size, v, C_out];
    bias [C_out]; pos_bias [T/s, C_out]. Returns a contiguous [B, T/s, C_out]. Out-of-range ids raise
    ValueError (in eager mode; the compiled kernels also check under torch.compile).
    """
    if use_kernel(_REGISTERED, table):
        return torch.ops.rhmfast.token_patch_embed(tokens, table, bias, pos_bias, patch_size, float(scale), activation)
    return reference.token_patch_embed(tokens, table, bias, pos_bias, patch_size=patch_size, scale=scale,
                                       activation=activation)


def _fake(tokens, table, bias, pos_bias, patch_size, scale, activation):
    check_activation(activation)
    batch, _, _, t_out, c_out = reference.check_token_patch_embed_args(tokens, table, bias, pos_bias, patch_size)
    return table.new_empty((batch, t_out, c_out))


def _fake_backward(grad_out, tokens, table, bias, pos_bias, out, patch_size, scale, activation, output_mask):
    batch, _, _, t_out, c_out = reference.check_token_patch_embed_args(tokens, table, bias, pos_bias, patch_size)
    check_layer_backward_args(grad_out, table, (batch, t_out, c_out), activation, out, relu_recomputes=True,
                              biases=(bias, pos_bias), output_mask=output_mask)
    shapes = (tuple(table.shape), (c_out,), (t_out, c_out))
    return tuple(table.new_empty(shape if wanted else (0,)) for shape, wanted in zip(shapes, output_mask))


if _REGISTERED:
    torch.library.register_fake("rhmfast::token_patch_embed")(_fake)
    torch.library.register_fake("rhmfast::token_patch_embed_backward")(_fake_backward)
