"""Pure-PyTorch reference of ``locally_connected``: a patchwise layer whose weights are untied, one weight
matrix per patch (the layer of the 2024 library's hierarchical LCN, models/lcn.py), as one batched product
over the patches.

Layout (shared with the kernels, see csrc/locally_connected.h): x is channels-last [B, T, C_in] with
T = P*s (P patches of s positions); patch p of sample b is the row x[b, p*s:(p+1)*s].flatten() (column
k*C_in + c, k the position in the patch). weight [P, C_out, s*C_in] in that (k, c) order, bias [P, C_out].
Output [B, P, C_out], row (b, p) = act(scale * patch(b, p) @ weight[p].T + bias[p]).
"""
from __future__ import annotations

import torch

from rhmfast.reference.patch_conv import check_activation, check_float, check_patch_size, check_same, finish


def check_locally_connected_args(x, weight, bias, patch_size):
    """Validates the arguments; returns (B, T, C_in, P, C_out)."""
    check_float(x, "x")
    check_same(weight, x, "weight", "x")
    if x.dim() != 3:
        raise ValueError(f"rhmfast: x must have shape [B, T, C_in] (channels-last), got {list(x.shape)}")
    if weight.dim() != 3:
        raise ValueError(f"rhmfast: weight must have shape [n_patches, C_out, patch_size*C_in], got "
                         f"{list(weight.shape)}")
    batch, length, c_in = x.shape
    n_patches = check_patch_size(patch_size, length)
    if weight.shape[0] != n_patches:
        raise ValueError(f"rhmfast: weight has {weight.shape[0]} patches but the input has T/patch_size = "
                         f"{length}/{patch_size} = {n_patches}")
    if weight.shape[2] != patch_size * c_in:
        raise ValueError(f"rhmfast: weight has {weight.shape[2]} columns but patch_size*C_in = "
                         f"{patch_size}*{c_in} = {patch_size * c_in}")
    c_out = weight.shape[1]
    if bias is not None:
        check_same(bias, weight, "bias", "weight")
        if tuple(bias.shape) != (n_patches, c_out):
            raise ValueError(f"rhmfast: bias must have shape [n_patches={n_patches}, C_out={c_out}], got "
                             f"{list(bias.shape)}")
    return batch, length, c_in, n_patches, c_out


def locally_connected(x, weight, bias=None, *, patch_size: int, scale: float = 1.0,
                      activation: str = "none") -> torch.Tensor:
    check_activation(activation)
    batch, _, c_in, n_patches, _ = check_locally_connected_args(x, weight, bias, patch_size)
    patches = x.reshape(batch, n_patches, patch_size * c_in).transpose(0, 1)  # [P, B, s*C_in]
    z = torch.bmm(patches, weight.transpose(1, 2)).transpose(0, 1).contiguous()  # [B, P, C_out]
    # A per-patch bias [P, C_out] is what the layers' epilogue calls a per-position bias.
    return finish(z, None, bias, scale, activation)
