"""Pure-PyTorch reference of the ``rhm_sample`` and ``rhm_decode`` ops: the executable specification
of csrc/include/rhmfast/rhm_core.h (see the layout contract there), and the fallback when the
extension is not built. Same arguments and the same bits as the C++ and CUDA kernels.
"""
from __future__ import annotations

import torch

from rhmfast.reference.philox import (
    FEISTEL_ROUNDS,
    PURPOSE_FEISTEL,
    PURPOSE_IID,
    philox4x32_10,
    split_seed,
    uniform_below,
)


def n_internal_nodes(s: int, L: int) -> int:
    return (s**L - 1) // (s - 1)


def per_class_count(m: int, s: int, L: int) -> int:
    """m ** n_internal: datum numbers per class (an exact Python int)."""
    return m ** n_internal_nodes(s, L)


def _check(rules: torch.Tensor, n_classes: int, dtype: torch.dtype, return_tree: bool) -> None:
    """The checks of csrc/rhm_sample.cpp, with the same words."""
    if rules.dtype != torch.int32:
        raise TypeError(f"rules must be int32, got {rules.dtype}")
    if rules.dim() != 4:
        raise ValueError(f"rules must have shape [L, R, m, s], got {tuple(rules.shape)}")
    L, R, m, s = rules.shape
    if not 1 <= L <= 64:
        raise ValueError(f"L must be in [1, 64], got {L}")
    if s < 2:
        raise ValueError(f"s must be >= 2, got {s}")
    if m < 1 or R < 1:
        raise ValueError(f"rules must have m >= 1 and R >= 1 rows, got {tuple(rules.shape)}")
    if not 1 <= n_classes <= R:
        raise ValueError(f"n_classes must be in [1, R={R}], got {n_classes}")
    if s**L > 1 << 31:
        raise ValueError(f"input length s^L must be <= 2^31, got {s**L}")
    lo, hi = int(rules.min()), int(rules.max())
    if lo < 0 or hi >= R:
        raise ValueError(f"rules entries must be in [0, R={R}), found values in [{lo}, {hi}]")
    if dtype not in (torch.uint8, torch.int16, torch.int32, torch.int64):
        raise TypeError(f"dtype must be uint8, int16, int32 or int64, got {dtype}")
    top = torch.iinfo(dtype).max
    if hi > top:
        raise ValueError(f"symbols up to {hi} do not fit dtype {dtype} (max {top})")
    if return_tree and n_classes - 1 > top:
        raise ValueError(f"labels up to {n_classes - 1} do not fit dtype {dtype} of the latent tree")


def iid_words(seed: int, index: torch.Tensor, n_words: int) -> torch.Tensor:
    """Words 0..n_words-1 of every sample in ``index`` (int64 [n]) -> int64 [n, n_words]."""
    k0, k1 = split_seed(seed)
    n_blocks = (n_words + 3) // 4
    block = torch.arange(n_blocks, dtype=torch.int64, device=index.device).expand(index.numel(), n_blocks)
    lo = (index & 0xFFFFFFFF).unsqueeze(1).expand_as(block)
    hi = (index >> 32).unsqueeze(1).expand_as(block)
    words = torch.stack(philox4x32_10(block, lo, hi, PURPOSE_IID, k0, k1), dim=2)
    return words.reshape(index.numel(), 4 * n_blocks)[:, :n_words]


def iid_choices(seed: int, index: torch.Tensor, n_internal: int, n_classes: int, m: int):
    """Labels [n] and rule choices [n, n_internal] of iid samples ``index``."""
    k0, k1 = split_seed(seed)
    words = iid_words(seed, index, n_internal + 1)
    t = torch.arange(n_internal + 1, dtype=torch.int64, device=index.device).expand_as(words)
    i = index.unsqueeze(1).expand_as(words)

    def redraw(attempt, mask):
        tt, ii = t[mask], i[mask]
        lanes = philox4x32_10(tt >> 2, ii & 0xFFFFFFFF, ii >> 32, PURPOSE_IID ^ (attempt << 8), k0, k1)
        return torch.stack(lanes, dim=1).gather(1, (tt & 3).unsqueeze(1)).squeeze(1)

    labels = uniform_below(words[:, :1], n_classes, lambda a, mask: redraw(a, _pad(mask, words, 0)))
    choices = uniform_below(words[:, 1:], m, lambda a, mask: redraw(a, _pad(mask, words, 1)))
    return labels.squeeze(1), choices


def _pad(mask: torch.Tensor, words: torch.Tensor, first: int) -> torch.Tensor:
    """A mask over columns first.. of ``words`` as a mask over all of its columns."""
    full = torch.zeros(words.shape, dtype=torch.bool, device=words.device)
    full[:, first:first + mask.shape[1]] = mask
    return full


def feistel_domain(size: int) -> tuple[int, int]:
    bits = max(2, (size - 1).bit_length())
    bits += bits & 1
    return bits // 2, (1 << (bits // 2)) - 1


def permute_index(index: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """The keyed Feistel permutation of [0, size) with cycle-walking, applied to ``index``.

    The state stays split in its (left, right) halves: for size > 2^62 the whole 64-bit state does
    not fit int64, but only values below size < 2^63 ever leave the loop.
    """
    half_bits, half_mask = feistel_domain(size)
    size_left, size_right = size >> half_bits, size & half_mask
    k0, k1 = split_seed(seed)

    def rounds(left, right):
        for r in range(FEISTEL_ROUNDS):
            f = philox4x32_10(right, r, 0, PURPOSE_FEISTEL, k0, k1)[0]
            left, right = right, left ^ (f & half_mask)
        return left, right

    def outside(left, right):
        return (left > size_left) | ((left == size_left) & (right >= size_right))

    left, right = rounds(index >> half_bits, index & half_mask)
    walk = outside(left, right)
    while bool(walk.any()):
        new_left, new_right = rounds(left[walk], right[walk])
        left, right = left.masked_scatter(walk, new_left), right.masked_scatter(walk, new_right)
        walk = outside(left, right)
    return (left << half_bits) | right


def decode_choices(datum: torch.Tensor, n_classes: int, m: int, s: int, L: int):
    """Labels and breadth-first rule choices of datum numbers (int64 tensor, all < pmax < 2^63)."""
    n_internal = n_internal_nodes(s, L)
    per_class = per_class_count(m, s, L)
    labels = torch.div(datum, per_class, rounding_mode="floor")
    rest = datum % per_class
    choices = torch.zeros(datum.numel(), n_internal, dtype=torch.int64, device=datum.device)
    if m > 1:
        for t in range(n_internal - 1, -1, -1):
            choices[:, t] = rest % m
            rest = torch.div(rest, m, rounding_mode="floor")
    return labels, choices


def expand(rules: torch.Tensor, labels: torch.Tensor, choices: torch.Tensor, dtype: torch.dtype,
           return_tree: bool):
    """Top-down expansion: level by level, every node takes the children of its chosen rule."""
    L, _, m, s = rules.shape
    table = rules.long()
    current = labels.unsqueeze(1)
    tree, start, width = [], 0, 1
    for level in range(L):
        if return_tree:
            tree.append(current.to(dtype))
        current = table[level][current, choices[:, start:start + width]].reshape(labels.numel(), width * s)
        start, width = start + width, width * s
    return current.to(dtype), labels.clone(), tree


def rhm_sample(rules: torch.Tensor, n_classes: int, n: int, seed: int, start: int, mode: str,
               dtype: torch.dtype, return_tree: bool):
    """Reference of ``torch.ops.rhmfast.rhm_sample`` (same arguments, same results)."""
    _check(rules, n_classes, dtype, return_tree)
    L, _, m, s = rules.shape
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if start + n >= 1 << 63:
        raise ValueError(f"start + n must be < 2^63, got {start + n}")
    index = torch.arange(start, start + n, dtype=torch.int64, device=rules.device)
    if mode == "iid":
        labels, choices = iid_choices(seed, index, n_internal_nodes(s, L), n_classes, m)
    elif mode == "index":
        pmax = n_classes * per_class_count(m, s, L)
        if pmax >= 1 << 63:
            raise ValueError(f"mode='index' needs pmax < 2^63, got pmax = {pmax}")
        if start + n > pmax:
            raise ValueError(f"mode='index' draws without replacement, so start + n must be <= pmax = {pmax}")
        labels, choices = decode_choices(permute_index(index, pmax, seed), n_classes, m, s, L)
    else:
        raise ValueError(f"mode must be 'iid' or 'index', got '{mode}'")
    return expand(rules, labels, choices, dtype, return_tree)


def rhm_decode(rules: torch.Tensor, datum: torch.Tensor, n_classes: int, dtype: torch.dtype, return_tree: bool):
    """Reference of ``torch.ops.rhmfast.rhm_decode``: datum numbers (int64 [n]) to samples."""
    _check(rules, n_classes, dtype, return_tree)
    L, _, m, s = rules.shape
    pmax = n_classes * per_class_count(m, s, L)
    if pmax >= 1 << 63:
        raise ValueError(f"decoding int64 datum numbers needs pmax < 2^63, got pmax = {pmax}")
    if datum.dtype != torch.int64 or datum.dim() != 1:
        raise ValueError(f"datum numbers must be a 1-D int64 tensor, got {datum.dtype} {tuple(datum.shape)}")
    if datum.numel() and (int(datum.min()) < 0 or int(datum.max()) >= pmax):
        raise ValueError(f"datum numbers must be in [0, pmax = {pmax})")
    labels, choices = decode_choices(datum, n_classes, m, s, L)
    return expand(rules, labels, choices, dtype, return_tree)
