"""``locally_connected``: a patchwise layer with untied weights (one weight matrix per patch) on channels-last
activations, as one batched GEMM over the patches with a fused epilogue. Dispatcher op
``torch.ops.rhmfast.locally_connected`` with fake kernel (here) and autograd (in C++,
csrc/locally_connected_autograd.cpp; its backward is the op ``locally_connected_backward``), or the
pure-PyTorch reference without the extension.
"""
from __future__ import annotations

import torch

from rhmfast.ops._kernels import op_registered, use_kernel
from rhmfast.reference import locally_connected as reference
from rhmfast.reference.patch_conv import check_activation, check_layer_backward_args


_REGISTERED = op_registered("locally_connected")

def locally_connected(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                      patch_size: int, scale: float = 1.0, activation: str = "none") -> torch.Tensor:
    """y[b, p] = act(scale * patch(b, p) @ weight[p].T + bias[p]), patch(b, p) = x[b, p*s:(p+1)*s].flatten().

    x [B, T, C_in] channels-last with T = n_patches * patch_size (any strides; a copy is made only when
    [T, C_in] is not dense), weight [n_patches, C_out, patch_size*C_in] in (k, c) column order (as
    patch_conv's), bias [n_patches, C_out], activation 'none', 'relu' or 'square'. Returns a contiguous
    [B, n_patches, C_out]. float32 and float64 (CUDA adds float16 and bfloat16, as patch_conv).
    """
    if use_kernel(_REGISTERED, x):
        return torch.ops.rhmfast.locally_connected(x, weight, bias, patch_size, float(scale), activation)
    return reference.locally_connected(x, weight, bias, patch_size=patch_size, scale=scale, activation=activation)


def _fake(x, weight, bias, patch_size, scale, activation):
    check_activation(activation)
    batch, _, _, n_patches, c_out = reference.check_locally_connected_args(x, weight, bias, patch_size)
    return x.new_empty((batch, n_patches, c_out))


def _fake_backward(grad_out, x, weight, bias, out, patch_size, scale, activation, output_mask):
    batch, length, c_in, n_patches, c_out = reference.check_locally_connected_args(x, weight, bias, patch_size)
    # The layer has no pos_bias: its output_mask entry is False.
    check_layer_backward_args(grad_out, weight, (batch, n_patches, c_out), activation, out, relu_recomputes=False,
                              biases=(bias, None), output_mask=(*output_mask, False))
    shapes = ((batch, length, c_in), tuple(weight.shape), (n_patches, c_out))
    return tuple(x.new_empty(shape if wanted else (0,)) for shape, wanted in zip(shapes, output_mask))


if _REGISTERED:
    torch.library.register_fake("rhmfast::locally_connected")(_fake)
    torch.library.register_fake("rhmfast::locally_connected_backward")(_fake_backward)
