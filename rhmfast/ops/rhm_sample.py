"""Python entry points of the ``rhm_sample`` / ``rhm_decode`` / ``philox_uniform`` ops.

Each call goes to the compiled kernel for the tensor's device when the extension is loaded (see
rhmfast._backend) and to the pure-PyTorch reference otherwise; both give the same bits. The fake
(meta) kernels let torch.compile trace through the ops.
"""
from __future__ import annotations

import torch

from rhmfast._backend import extension_loaded, use_extension
from rhmfast.reference import philox as philox_ref
from rhmfast.reference import rhm_sample as sample_ref


def _as_int64(x: int) -> int:
    """Seeds are 64-bit patterns; the schema's int is signed."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= 1 << 63 else x


def rhm_sample(rules, n_classes, n, seed, start, mode, dtype, return_tree):
    if use_extension(rules.device):
        return torch.ops.rhmfast.rhm_sample(rules, n_classes, n, _as_int64(seed), start, mode, dtype, return_tree)
    return sample_ref.rhm_sample(rules, n_classes, n, seed, start, mode, dtype, return_tree)


def rhm_decode(rules, datum, n_classes, dtype, return_tree):
    if use_extension(rules.device):
        return torch.ops.rhmfast.rhm_decode(rules, datum, n_classes, dtype, return_tree)
    return sample_ref.rhm_decode(rules, datum, n_classes, dtype, return_tree)


def philox_uniform(counter: torch.Tensor, seed: int, bound: int = 0) -> torch.Tensor:
    """Philox4x32-10 blocks of ``counter`` (int64 [N, 4], entries < 2^32) under a 64-bit ``seed``.

    With ``bound`` = 0 the raw 32-bit words; with 1 <= bound < 2^32 each word mapped exactly to [0, bound).
    The extension has a CPU kernel only: on other devices the reference (same bits) runs.
    """
    if counter.device.type == "cpu" and use_extension(counter.device):
        return torch.ops.rhmfast.philox_uniform(counter, _as_int64(seed), bound)
    return philox_ref.philox_uniform(counter, seed, bound)


def _fake_outputs(rules, n, dtype, return_tree):
    L, _, _, s = rules.shape
    tokens = rules.new_empty((n, s**L), dtype=dtype)
    labels = rules.new_empty((n,), dtype=torch.int64)
    tree = [rules.new_empty((n, s**level), dtype=dtype) for level in range(L)] if return_tree else []
    return tokens, labels, tree


if extension_loaded():

    @torch.library.register_fake("rhmfast::rhm_sample")
    def _(rules, n_classes, n, seed, start, mode, dtype, return_tree):
        return _fake_outputs(rules, n, dtype, return_tree)

    @torch.library.register_fake("rhmfast::rhm_decode")
    def _(rules, datum, n_classes, dtype, return_tree):
        if datum.device != rules.device:
            raise ValueError(f"rhmfast: datum numbers must be on the rules' device {rules.device}, got {datum.device}")
        return _fake_outputs(rules, datum.shape[0], dtype, return_tree)

    @torch.library.register_fake("rhmfast::philox_uniform")
    def _(counter, seed, bound):
        return torch.empty_like(counter, memory_format=torch.contiguous_format)
