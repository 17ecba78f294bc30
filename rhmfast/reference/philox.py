"""Pure-PyTorch reference of the counter-based random numbers (csrc/include/rhmfast/rhm_core.h).

32-bit words live in int64 tensors. Products of two 32-bit numbers are formed from 16-bit halves so no
intermediate exceeds 2^49: the arithmetic is exact on every device and never relies on overflow.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
PURPOSE_IID = 0
PURPOSE_FEISTEL = 1
PURPOSE_LABEL_HIERARCHY = 2  # the input bits of rhmfast.data.hierarchy (no kernel: drawn through philox_uniform)
FEISTEL_ROUNDS = 6

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85


def mulhilo(a, b):
    """(high, low) 32-bit words of a * b for 32-bit a, b (int64 tensors or Python ints)."""
    b_lo, b_hi = b & 0xFFFF, b >> 16
    low_part = a * b_lo
    high_part = a * b_hi
    mid = low_part + ((high_part & 0xFFFF) << 16)
    return (high_part >> 16) + (mid >> 32), mid & MASK32


def philox4x32_10(c0, c1, c2, c3, key0: int, key1: int):
    """Philox4x32-10 of counters (c0, c1, c2, c3) under key (key0, key1); returns four word tensors."""
    like = next(c for c in (c0, c1, c2, c3) if isinstance(c, torch.Tensor))
    c0, c1, c2, c3 = (c if isinstance(c, torch.Tensor) else torch.full_like(like, c) for c in (c0, c1, c2, c3))
    for _ in range(10):
        hi0, lo0 = mulhilo(_M0, c0)
        hi1, lo1 = mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ key0, lo1, hi0 ^ c3 ^ key1, lo0
        key0, key1 = (key0 + _W0) & MASK32, (key1 + _W1) & MASK32
    return c0, c1, c2, c3


def split_seed(seed: int) -> tuple[int, int]:
    seed &= (1 << 64) - 1
    return seed & MASK32, seed >> 32


def uniform_below(words: torch.Tensor, n: int, redraw) -> torch.Tensor:
    """Exactly uniform integers in [0, n) from uniform 32-bit words (multiply-shift with rejection).

    ``redraw(attempt, mask)`` returns fresh words for the entries selected by ``mask``.
    """
    high, low = mulhilo(words, n)
    threshold = ((1 << 32) - n) % n
    rejected = low < threshold
    attempt = 1
    while bool(rejected.any()):
        fresh_high, fresh_low = mulhilo(redraw(attempt, rejected), n)
        high = high.masked_scatter(rejected, fresh_high)
        low = low.masked_scatter(rejected, fresh_low)
        rejected = rejected & (low < threshold)
        attempt += 1
    return high


def philox_uniform(counter: torch.Tensor, seed: int, bound: int) -> torch.Tensor:
    """Reference of the ``philox_uniform`` op: counter int64 [N, 4] -> words or integers in [0, bound)."""
    if counter.dtype != torch.int64 or counter.dim() != 2 or counter.shape[1] != 4:
        raise ValueError(f"counter must be an int64 tensor of shape [N, 4], got {counter.dtype} {tuple(counter.shape)}")
    if not 0 <= bound < 1 << 32:
        raise ValueError(f"bound must be in [0, 2^32), got {bound}")
    if counter.numel() and (int(counter.min()) < 0 or int(counter.max()) > MASK32):
        raise ValueError("counter entries must be in [0, 2^32)")
    k0, k1 = split_seed(seed)
    c = counter.unbind(1)
    words = torch.stack(philox4x32_10(*c, k0, k1), dim=1)
    if bound == 0:
        return words
    out = []
    for lane in range(4):
        def redraw(attempt, mask, lane=lane):
            sel = [x[mask] for x in c]
            return philox4x32_10(sel[0], sel[1], sel[2], sel[3] ^ (attempt << 8), k0, k1)[lane]

        out.append(uniform_below(words[:, lane], bound, redraw))
    return torch.stack(out, dim=1)
