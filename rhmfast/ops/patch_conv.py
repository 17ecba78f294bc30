"""``patch_conv``: a Conv1d with kernel = stride = patch_size on channels-last activations, as one GEMM
with a fused epilogue. Dispatcher op ``torch.ops.rhmfast.patch_conv`` with fake kernel (here) and autograd
(in C++, csrc/patch_conv_autograd.cpp; its backward is the op ``patch_conv_backward``), or the pure-PyTorch
reference without the extension.
"""
from __future__ import annotations

import torch

from rhmfast.ops._kernels import op_registered, use_kernel
from rhmfast.reference import patch_conv as reference


_REGISTERED = op_registered("patch_conv")

def patch_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               pos_bias: torch.Tensor | None = None, *, patch_size: int, scale: float = 1.0,
               activation: str = "none") -> torch.Tensor:
    """y = act(scale * patches(x) @ weight.T + bias + pos_bias).

    x [B, T, C_in] channels-last (any strides; a copy is made only when [T, C_in] is not dense),
    weight [C_out, patch_size*C_in] in (k, c) column order, bias [C_out], pos_bias [T/s, C_out],
    activation 'none', 'relu' or 'square'. Returns a contiguous [B, T/s, C_out].

    Replica form (K independent layers in one call): x [K, B, T, C_in], weight [K, C_out, patch_size*C_in],
    bias [K, C_out], pos_bias [K, T/s, C_out] -> [K, B, T/s, C_out], replica k equal (on the CPU, bit for
    bit) to the solo call on replica k's slices. Chosen by x 4-D or weight 3-D; mixed forms and differing K
    raise ValueError. Each replica slice of the result is contiguous and 64-byte aligned: where a replica's
    size is not a multiple of 64 bytes, stride(0) is padded and the result is not contiguous as a whole.
    """
    if use_kernel(_REGISTERED, x):
        return torch.ops.rhmfast.patch_conv(x, weight, bias, pos_bias, patch_size, float(scale), activation)
    return reference.patch_conv(x, weight, bias, pos_bias, patch_size=patch_size, scale=scale, activation=activation)


def _result(like, replicas, shape):
    """A fake result: the solo form's contiguous tensor, or the replica form's layout (K in front)."""
    if replicas is None:
        return like.new_empty(shape)
    return reference.new_replica_result(like, (replicas, *shape))


def _fake(x, weight, bias, pos_bias, patch_size, scale, activation):
    reference.check_activation(activation)
    replicas, batch, _, _, t_out, c_out = reference.check_patch_conv_args(x, weight, bias, pos_bias, patch_size,
                                                                          with_replicas=True)
    return _result(x, replicas, (batch, t_out, c_out))


def _fake_backward(grad_out, x, weight, bias, pos_bias, out, patch_size, scale, activation, output_mask):
    replicas, batch, length, c_in, t_out, c_out = reference.check_patch_conv_args(x, weight, bias, pos_bias,
                                                                                  patch_size, with_replicas=True)
    lead = () if replicas is None else (replicas,)
    reference.check_layer_backward_args(grad_out, weight, lead + (batch, t_out, c_out), activation, out,
                                        relu_recomputes=False, biases=(bias, pos_bias), output_mask=output_mask)
    shapes = ((batch, length, c_in), (c_out, patch_size * c_in), (c_out,), (t_out, c_out))
    return tuple(_result(x, replicas, shape) if wanted else x.new_empty((0,))
                 for shape, wanted in zip(shapes, output_mask))


if _REGISTERED:
    torch.library.register_fake("rhmfast::patch_conv")(_fake)
    torch.library.register_fake("rhmfast::patch_conv_backward")(_fake_backward)
