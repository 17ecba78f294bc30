"""``patch_conv_stack``: a whole hCNN trunk (token layer + L-1 patch layers, one activation, per-layer
scales) under one autograd boundary that saves only the layer outputs. Dispatcher op with fake kernel (here)
and autograd (in C++, csrc/patch_conv_stack_autograd.cpp; backward op ``patch_conv_stack_backward``), or the
pure-PyTorch reference without the extension.
"""
from __future__ import annotations

import math

import torch

from rhmfast.ops._kernels import op_registered, use_kernel
from rhmfast.reference import patch_conv_stack as reference
from rhmfast.reference.patch_conv import (check_activation, check_patch_conv_args, check_same,
                                          new_replica_result)
from rhmfast.reference.token_patch_embed import check_token_patch_embed_args


_REGISTERED = op_registered("patch_conv_stack")

def hcnn_scales(table: torch.Tensor, weights) -> list[float]:
    """The reference hCNN's 1/sqrt(fan_in) per layer: fan_in = s*v for the token layer, s*C_in after (solo
    or replica form alike)."""
    return [1.0 / math.sqrt(table.shape[-3] * table.shape[-2])] + [1.0 / math.sqrt(w.shape[-1]) for w in weights]


def patch_conv_stack(tokens: torch.Tensor, table: torch.Tensor, weights, biases=None, *, patch_size: int,
                     scales=None, activation: str = "relu", return_all: bool = False):
    """Runs token_patch_embed then patch_conv for each weight, channels-last throughout.

    table [s, v, C_0]; weights[l] [C_{l+1}, s*C_l]; biases None or one [C_l] per layer; scales None (all
    1), "hcnn" (1/sqrt(fan_in), see hcnn_scales) or one float per layer. Returns the last output
    [B, T/s^L, C_L], or every layer's output when return_all (their gradients are all honoured).

    Replica form (K independent trunks in one call): tokens [K, B, T], table [K, s, v, C_0], weights[l]
    [K, C_{l+1}, s*C_l], biases None or one [K, C_l] per layer; every output [K, B, T_l, C_l], replica k
    equal (on the CPU, bit for bit) to the solo call on replica k's slices. The form is the token layer's
    (tokens 3-D or table 4-D); weights or biases of the other form, or of another K, raise ValueError
    naming them. Results are laid out as patch_conv's replica form (each replica slice contiguous and
    64-byte aligned).
    """
    weights = list(weights)
    biases = list(biases) if biases is not None else []
    if scales is None:
        scales = [1.0] * (len(weights) + 1)
    elif isinstance(scales, str):
        if scales != "hcnn":
            raise ValueError(f"rhmfast: scales must be None, 'hcnn' or a list of floats, got {scales!r}")
        scales = hcnn_scales(table, weights)
    scales = [float(c) for c in scales]
    if use_kernel(_REGISTERED, table):
        outs = torch.ops.rhmfast.patch_conv_stack(tokens, table, weights, biases, patch_size, scales, activation)
    else:
        outs = reference.patch_conv_stack(tokens, table, weights, biases, patch_size=patch_size, scales=scales,
                                          activation=activation)
    return list(outs) if return_all else outs[-1]


def _shapes(tokens, table, weights, biases, patch_size, scales, activation):
    """Output shapes [B, T_l, C_l] of every layer, validating the arguments on the way."""
    check_activation(activation)
    reference.check_stack_args(weights, biases, scales, tokens, table, patch_size)
    bias = list(biases) if biases else [None] * (len(weights) + 1)
    replicas, batch, _, _, t_out, c_out = check_token_patch_embed_args(tokens, table, bias[0], None, patch_size,
                                                                       with_replicas=True)
    lead = () if replicas is None else (replicas,)
    shapes = [lead + (batch, t_out, c_out)]
    for l, weight in enumerate(weights):
        probe = table.new_empty(shapes[-1])  # only ever runs on fake tensors: costs no memory
        batch, _, _, t_out, c_out = check_patch_conv_args(probe, weight, bias[l + 1], None, patch_size)
        shapes.append(lead + (batch, t_out, c_out))
    return shapes


def _new_result(like, shape):
    """A fake result laid out as the kernels lay it out (the replica form: see new_replica_result)."""
    return like.new_empty(shape) if like.dim() == 3 else new_replica_result(like, shape)


def _fake(tokens, table, weights, biases, patch_size, scales, activation):
    return [_new_result(table, shape) for shape in _shapes(tokens, table, weights, biases, patch_size, scales,
                                                             activation)]


def _fake_backward(grad_outs, tokens, table, weights, biases, outs, patch_size, scales, activation):
    shapes = _shapes(tokens, table, weights, biases, patch_size, scales, activation)
    if len(outs) != len(shapes) or len(grad_outs) != len(shapes):
        raise ValueError(f"rhmfast: outs and grad_outs must have one entry per layer ({len(shapes)}), got "
                         f"{len(outs)} and {len(grad_outs)}")
    for l, (grad, shape) in enumerate(zip(grad_outs, shapes)):
        if grad is None:
            continue
        if tuple(grad.shape) != shape:
            raise ValueError(f"rhmfast: grad_outs[{l}] must have the shape of outs[{l}], {list(shape)}, got "
                             f"{list(grad.shape)}")
        check_same(grad, table, f"grad_outs[{l}]", "table")
    return (_new_result(table, table.shape), [_new_result(table, w.shape) for w in weights],
            [_new_result(table, b.shape) for b in biases])


if _REGISTERED:
    torch.library.register_fake("rhmfast::patch_conv_stack")(_fake)
    torch.library.register_fake("rhmfast::patch_conv_stack_backward")(_fake_backward)
