"""rhmfast.one_hot: the reference codes' one-hot float inputs, layouts and whitenings."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import rhmfast

from conftest import TOKEN_DTYPES


def expected_one_hot(tokens, v, layout, dtype, whiten):
    """Built from F.one_hot and the documented whitening formulas."""
    x = F.one_hot(tokens.long(), v).to(torch.float64)  # [P, d, v]
    if whiten in (True, "2024"):
        x = (x - 1.0 / v) / math.sqrt(1.0 - 1.0 / v)
    elif whiten == "2023":
        x = x * (1 + (v - 1) ** -0.5) - (v - 1) ** -0.5
    if layout == "ncl":
        x = x.permute(0, 2, 1)
    return x.to(dtype).contiguous()


@pytest.mark.parametrize("token_dtype", TOKEN_DTYPES)
@pytest.mark.parametrize("layout", ["ncl", "nlc"])
@pytest.mark.parametrize("whiten", [False, True, "2024", "2023"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_hot_matches_construction(token_dtype, layout, whiten, dtype):
    """Every layout, whitening, token dtype and float dtype equals the F.one_hot-based construction."""
    g = rhmfast.RHM(7, 2, 2, 3, seed=1)
    tokens, _ = g.sample(33, seed=2, dtype=token_dtype)
    out = rhmfast.one_hot(tokens, g.v, layout=layout, dtype=dtype, whiten=whiten)
    assert out.dtype == dtype
    assert out.shape == ((33, 7, 8) if layout == "ncl" else (33, 8, 7))
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert torch.allclose(out, expected_one_hot(tokens, g.v, layout, dtype, whiten), atol=tol, rtol=0)


def test_default_is_channels_first_float32_unwhitened():
    """Default: [P, v, d] float32 of 0/1 with exactly one 1 per position, at the token's channel."""
    tokens = torch.tensor([[0, 3, 1], [2, 2, 0]], dtype=torch.uint8)
    out = rhmfast.one_hot(tokens, 4)
    assert out.dtype == torch.float32 and out.shape == (2, 4, 3)
    assert torch.equal(out.sum(1), torch.ones(2, 3))
    assert torch.equal(out.argmax(1), tokens.long())


def test_whitening_2024_is_centered_and_unit_norm():
    """2024 whitening: each position's channel vector has mean 0 and unit Euclidean norm."""
    v = 9
    out = rhmfast.one_hot(torch.randint(0, v, (5, 6)), v, whiten=True, dtype=torch.float64)
    assert torch.allclose(out.mean(1), torch.zeros(5, 6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose((out**2).sum(1), torch.ones(5, 6, dtype=torch.float64), atol=1e-12)


def test_empty_batch():
    """P = 0 gives an empty [0, v, d] tensor."""
    out = rhmfast.one_hot(torch.zeros(0, 4, dtype=torch.int64), 5)
    assert out.shape == (0, 5, 4)


@pytest.mark.parametrize("tokens,v,kwargs,error,match", [
    (torch.tensor([[0, 5]]), 5, {}, ValueError, r"token ids must be in \[0, v = 5\)"),
    (torch.tensor([[0, -1]]), 5, {}, ValueError, r"token ids"),
    (torch.tensor([[300]], dtype=torch.int16), 256, {}, ValueError, r"token ids"),
    (torch.tensor([0, 1]), 5, {}, ValueError, r"shape \[P, d\]"),
    (torch.tensor([[0.0, 1.0]]), 5, {}, TypeError, r"integer tensor"),
    (torch.tensor([[0, 1]]), 1, {}, ValueError, r"\bv must be"),
    (torch.tensor([[0, 1]]), 5.0, {}, ValueError, r"\bv must be"),
    (torch.tensor([[0, 1]]), 5, dict(layout="nchw"), ValueError, r"layout"),
    (torch.tensor([[0, 1]]), 5, dict(dtype=torch.int32), TypeError, r"dtype"),
    (torch.tensor([[0, 1]]), 5, dict(whiten="2025"), ValueError, r"whiten"),
])
def test_one_hot_errors(tokens, v, kwargs, error, match):
    """Tokens >= v (or negative), wrong shapes/dtypes, bad v, layout, dtype or whitening are rejected."""
    with pytest.raises(error, match=match):
        rhmfast.one_hot(tokens, v, **kwargs)
