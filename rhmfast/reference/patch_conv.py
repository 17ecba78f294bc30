"""Pure-PyTorch reference of ``patch_conv``: the executable spec of the patchwise layer.

Layout (shared with the kernels, see csrc/patch_conv.h): x is channels-last [B, T, C_in]; the layer
reads it as [B, T/s, s*C_in] (column k*C_in + c, k the position in the patch) and computes
``act(scale * x_patches @ weight.T + bias + pos_bias)`` with weight [C_out, s*C_in], bias [C_out],
pos_bias [T/s, C_out]. Output [B, T/s, C_out].

Replica form: every data and parameter tensor gains a leading K (x [K, B, T, C_in], weight
[K, C_out, s*C_in], bias [K, C_out], pos_bias [K, T/s, C_out], output [K, B, T/s, C_out]): K independent
layers, replica k being the solo layer on replica k's slices. The form is chosen by the dims (x 4-D or
weight 3-D); a mixed form or two different K raise ValueError naming the argument.
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


def check_biases(bias, pos_bias, ref: torch.Tensor, ref_name: str, t_out: int, c_out: int,
                 replicas: int | None = None) -> None:
    """bias [C_out] and pos_bias [T/s, C_out] beside ref, each with a leading K in the replica form
    (replicas = K; None: the solo form)."""
    lead = () if replicas is None else (replicas,)
    for name, t, shape in (("bias", bias, lead + (c_out,)), ("pos_bias", pos_bias, lead + (t_out, c_out))):
        if t is None:
            continue
        check_same(t, ref, name, ref_name)
        if tuple(t.shape) != shape:
            form = "" if replicas is None else " (replica form)"
            raise ValueError(f"rhmfast: {name} must have shape {list(shape)}{form}, got {list(t.shape)}")


def check_replica_pair(a: torch.Tensor, a_name: str, a_shape: str, b: torch.Tensor, b_name: str,
                       b_shape: str) -> int:
    """The replica form's checks of its two main tensors (the data a, the parameters b): their dims (a
    mixed form names the argument that does not fit) and one K, which it returns."""
    for t, name, shape, other, other_shape in ((a, a_name, a_shape, b_name, b_shape),
                                               (b, b_name, b_shape, a_name, a_shape)):
        if t.dim() != shape.count(",") + 1:
            raise ValueError(f"rhmfast: {name} must have shape {shape} (replica form, as {other} is "
                             f"{other_shape}), got {list(t.shape)}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"rhmfast: {a_name} has K={a.shape[0]} replicas but {b_name} has K={b.shape[0]}: the "
                         "replica dim (dim 0) must agree")
    return a.shape[0]


def replica_stride(replicas: int, per_replica: int, element_size: int) -> int:
    """Elements between replica slices of a tensor the replica-form ops return: per_replica rounded up to
    64 bytes (csrc/patch_conv.h: each replica slice aligned like a fresh solo tensor, since the CPU BLAS's
    bits depend on its operands' alignment); per_replica itself when K <= 1 or it is a multiple of 64 bytes."""
    nbytes = per_replica * element_size
    if replicas <= 1 or nbytes % 64 == 0:
        return per_replica
    return -(-nbytes // 64) * 64 // element_size


def new_replica_result(like: torch.Tensor, shape) -> torch.Tensor:
    """An empty tensor (like's dtype and device) laid out as the kernels lay out a replica-form result of
    `shape` [K, ...] (each replica slice contiguous, stride(0) = replica_stride): for the fake kernels."""
    shape = tuple(int(d) for d in shape)
    per = 1
    for d in shape[1:]:
        per *= d
    first = replica_stride(shape[0], per, like.dtype.itemsize)
    if first == per:
        return like.new_empty(shape)
    strides, st = [], 1
    for d in reversed(shape[1:]):
        strides.append(st)
        st *= max(d, 1)
    return like.new_empty_strided(shape, (first, *reversed(strides)))


def check_patch_conv_args(x, weight, bias, pos_bias, patch_size, *, with_replicas: bool = False):
    """Validates the arguments; returns (B, T, C_in, T_out, C_out), with K (None in the solo form) in front
    when with_replicas."""
    check_float(x, "x")
    check_same(weight, x, "weight", "x")
    replicas = None
    if x.dim() == 4 or weight.dim() == 3:
        replicas = check_replica_pair(x, "x", "[K, B, T, C_in]", weight, "weight", "[K, C_out, patch_size*C_in]")
    else:
        if x.dim() != 3:
            raise ValueError(f"rhmfast: x must have shape [B, T, C_in] (channels-last), got {list(x.shape)}")
        if weight.dim() != 2:
            raise ValueError(f"rhmfast: weight must have shape [C_out, patch_size*C_in], got {list(weight.shape)}")
    batch, length, c_in = x.shape[-3:]
    t_out = check_patch_size(patch_size, length)
    if weight.shape[-1] != patch_size * c_in:
        raise ValueError(f"rhmfast: weight has {weight.shape[-1]} columns but patch_size*C_in = "
                         f"{patch_size}*{c_in} = {patch_size * c_in}")
    check_biases(bias, pos_bias, weight, "weight", t_out, weight.shape[-2], replicas)
    dims = (batch, length, c_in, t_out, weight.shape[-2])
    return (replicas, *dims) if with_replicas else dims


def finish(z: torch.Tensor, bias, pos_bias, scale: float, activation: str) -> torch.Tensor:
    """act(scale * z + bias + pos_bias) for z [B, T_out, C_out] (or [K, B, T_out, C_out] with bias [K, C_out]
    and pos_bias [K, T_out, C_out]): the layers' common epilogue."""
    replica = z.dim() == 4
    z = z * scale
    if bias is not None:
        z = z + (bias[:, None, None, :] if replica else bias)
    if pos_bias is not None:
        z = z + (pos_bias[:, None] if replica else pos_bias)
    if activation == "relu":
        return torch.relu(z)
    if activation == "square":
        return z * z
    return z


def patch_conv(x, weight, bias=None, pos_bias=None, *, patch_size: int, scale: float = 1.0,
               activation: str = "none") -> torch.Tensor:
    check_activation(activation)
    replicas, batch, _, c_in, t_out, _ = check_patch_conv_args(x, weight, bias, pos_bias, patch_size,
                                                               with_replicas=True)
    if replicas is not None:
        patches = x.reshape(replicas, batch * t_out, patch_size * c_in)
        z = torch.bmm(patches, weight.transpose(1, 2)).reshape(replicas, batch, t_out, -1)
        return finish(z, bias, pos_bias, scale, activation)
    patches = x.reshape(batch, t_out, patch_size * c_in)
    return finish(patches @ weight.t(), bias, pos_bias, scale, activation)
