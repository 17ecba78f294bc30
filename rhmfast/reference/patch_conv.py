"""Pure-PyTorch reference of ``patch_conv``: the executable spec of the patchwise layer.

Layout (shared with the kernels, see csrc/patch_conv.h): x is channels-last [B, T, C_in]; the layer
reads it as [B, T/s, s*C_in] (column k*C_in + c, k the position in the patch) and computes
``act(scale * x_patches @ weight.T + bias + pos_bias)`` with weight [C_out, s*C_in], bias [C_out],
pos_bias [T/s, C_out]. Output [B, T/s, C_out].
"""
from __future__ import annotations

import torch

ACTIVATIONS = ("none", "relu", "square")


def check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"rhmfast: activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def check_patch_size(patch_size: int, length: int) -> int:
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"rhmfast: patch_size must be an int >= 1, got {patch_size!r}")
    if length % patch_size != 0:
        raise ValueError(f"rhmfast: input length {length} is not a multiple of patch_size {patch_size}")
    return length // patch_size


def check_float(t: torch.Tensor, name: str) -> None:
    allowed = (torch.float32, torch.float64)
    if t.device.type == "cuda":
        allowed += (torch.float16, torch.bfloat16)
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"rhmfast: {name} must be one of {names} on {t.device.type}, got {t.dtype}")


def check_same(t: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str) -> None:
    """t on ref's device (ValueError) with ref's dtype (TypeError), as the compiled ops check."""
    if t.device != ref.device:
        raise ValueError(f"rhmfast: {name} is on {t.device}, {ref_name} on {ref.device}: they must be on one device")
    if t.dtype != ref.dtype:
        raise TypeError(f"rhmfast: {name} has dtype {t.dtype}, {ref_name} {ref.dtype}: they must have one dtype")


def check_layer_backward_args(grad_out, params, shape, activation, out, *, relu_recomputes: bool, biases,
                              output_mask) -> None:
    """The backward ops' argument checks (the compiled kernels' check_layer_backward), for their fake
    kernels: grad_out of the output's shape beside the weights, relu's `out`, biases for bias gradients.
    biases: (bias, pos_bias); output_mask: the op's, whose last two entries ask for their gradients."""
    if tuple(grad_out.shape) != tuple(shape):
        raise ValueError(f"rhmfast: grad_out must have the output's shape {list(shape)}, got {list(grad_out.shape)}")
    check_same(grad_out, params, "grad_out", "the weights")
    if activation == "relu" and not relu_recomputes and out is None:
        raise ValueError(f"rhmfast: relu backward needs the forward output `out` of shape {list(shape)}")
    if out is not None and activation == "relu":
        if tuple(out.shape) != tuple(shape):
            raise ValueError(f"rhmfast: out must have the output's shape {list(shape)}, got {list(out.shape)}")
        check_same(out, params, "out", "the weights")
    for name, tensor, wanted in zip(("bias", "pos_bias"), biases, output_mask[-2:]):
        if wanted and tensor is None:
            raise ValueError(f"rhmfast: grad of {name} asked for but {name} is None")


def check_biases(bias, pos_bias, ref: torch.Tensor, ref_name: str, t_out: int, c_out: int) -> None:
    for name, t, shape in (("bias", bias, (c_out,)), ("pos_bias", pos_bias, (t_out, c_out))):
        if t is None:
            continue
        check_same(t, ref, name, ref_name)
        if tuple(t.shape) != shape:
            raise ValueError(f"rhmfast: {name} must have shape {list(shape)}, got {list(t.shape)}")


def check_patch_conv_args(x, weight, bias, pos_bias, patch_size) -> tuple[int, int, int, int, int]:
    """Validates the arguments; returns (B, T, C_in, T_out, C_out)."""
    check_float(x, "x")
    check_same(weight, x, "weight", "x")
    if x.dim() != 3:
        raise ValueError(f"rhmfast: x must have shape [B, T, C_in] (channels-last), got {list(x.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"rhmfast: weight must have shape [C_out, patch_size*C_in], got {list(weight.shape)}")
    batch, length, c_in = x.shape
    t_out = check_patch_size(patch_size, length)
    if weight.shape[1] != patch_size * c_in:
        raise ValueError(f"rhmfast: weight has {weight.shape[1]} columns but patch_size*C_in = "
                         f"{patch_size}*{c_in} = {patch_size * c_in}")
    check_biases(bias, pos_bias, weight, "weight", t_out, weight.shape[0])
    return batch, length, c_in, t_out, weight.shape[0]


def finish(z: torch.Tensor, bias, pos_bias, scale: float, activation: str) -> torch.Tensor:
    """act(scale * z + bias + pos_bias) for z [B, T_out, C_out]: the layers' common epilogue."""
    z = z * scale
    if bias is not None:
        z = z + bias
    if pos_bias is not None:
        z = z + pos_bias
    if activation == "relu":
        return torch.relu(z)
    if activation == "square":
        return z * z
    return z


def patch_conv(x, weight, bias=None, pos_bias=None, *, patch_size: int, scale: float = 1.0,
               activation: str = "none") -> torch.Tensor:
    check_activation(activation)
    batch, _, c_in, t_out, _ = check_patch_conv_args(x, weight, bias, pos_bias, patch_size)
    patches = x.reshape(batch, t_out, patch_size * c_in)
    return finish(patches @ weight.t(), bias, pos_bias, scale, activation)
