"""Philox4x32-10: published known-answer vectors, and the exact bounded mode (uniform_below)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from scipy import stats

import rhmfast
from rhmfast.reference import philox as philox_ref

from conftest import MASK32, below_py, philox_py

# Random123 known-answer vectors for philox4x32_10: (counter words, key words, output words).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

IMPLEMENTATIONS = {
    "op": lambda counter, seed, bound=0: rhmfast.philox_uniform(counter, seed, bound),
    "torch.ops": lambda counter, seed, bound=0: torch.ops.rhmfast.philox_uniform(
        counter, seed - (1 << 64) if seed >= 1 << 63 else seed, bound),
    "reference": lambda counter, seed, bound=0: philox_ref.philox_uniform(counter, seed, bound),
}


def key_to_seed(key) -> int:
    return key[0] | (key[1] << 32)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("counter,key,expected", KAT, ids=["zero", "ones", "pi"])
def test_known_answer_vectors(impl, counter, key, expected):
    """Each implementation reproduces the Random123 vectors; the key is the 64-bit seed (low word = k0)."""
    out = IMPLEMENTATIONS[impl](torch.tensor([counter], dtype=torch.int64), key_to_seed(key))
    assert out.dtype == torch.int64 and out.shape == (1, 4)
    assert [hex(w) for w in out[0].tolist()] == [hex(w) for w in expected]


@pytest.mark.parametrize("counter,key,expected", KAT, ids=["zero", "ones", "pi"])
def test_python_model_known_answers(counter, key, expected):
    """The tests' own pure-Python Philox (used to check the sampling contract) matches Random123."""
    assert philox_py(counter, key) == list(expected)


def test_all_vectors_in_one_batch():
    """A batch of the three counters under one key: rows are independent of their neighbours."""
    counters = torch.tensor([c for c, _, _ in KAT], dtype=torch.int64)
    seed = key_to_seed(KAT[2][1])
    expected = torch.tensor([philox_py(c, KAT[2][1]) for c, _, _ in KAT], dtype=torch.int64)
    for impl in IMPLEMENTATIONS.values():
        assert torch.equal(impl(counters, seed), expected)


def test_random_counters_and_seeds_agree(rng):
    """Random counters and seeds (including seeds >= 2^63): extension == reference == Python model."""
    counters = torch.tensor([[rng.randrange(1 << 32) for _ in range(4)] for _ in range(257)], dtype=torch.int64)
    for seed in (rng.randrange(1 << 63), (1 << 63) + rng.randrange(1 << 63), (1 << 64) - 1):
        a = rhmfast.philox_uniform(counters, seed)
        b = philox_ref.philox_uniform(counters, seed, 0)
        assert torch.equal(a, b)
        assert (a >= 0).all() and (a <= MASK32).all()
        key = (seed & MASK32, seed >> 32)
        for row in rng.sample(range(counters.shape[0]), 8):
            assert a[row].tolist() == philox_py(counters[row].tolist(), key)


def test_empty_counter():
    """N = 0 gives an empty [0, 4] result in both implementations."""
    empty = torch.zeros(0, 4, dtype=torch.int64)
    assert rhmfast.philox_uniform(empty, 3, 7).shape == (0, 4)
    assert philox_ref.philox_uniform(empty, 3, 7).shape == (0, 4)


BOUNDS = [1, 2, 3, 10, 1000003, (1 << 31) + 1, 3 * (1 << 30) + 7, (1 << 32) - 1]


@pytest.mark.parametrize("bound", BOUNDS)
def test_bounded_mode_agrees_and_is_in_range(bound, rng):
    """Bounded mode: extension == reference == Python model of multiply-shift with rejection, in range."""
    n = 2048
    counters = torch.tensor([[rng.randrange(1 << 32) for _ in range(3)] + [rng.randrange(1 << 8)]
                             for _ in range(n)], dtype=torch.int64)
    seed = rng.randrange(1 << 64)
    a = rhmfast.philox_uniform(counters, seed, bound)
    b = philox_ref.philox_uniform(counters, seed, bound)
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() < bound
    key = (seed & MASK32, seed >> 32)
    for row in range(0, n, 97):
        c = counters[row].tolist()
        words = philox_py(c, key)
        expected = [below_py(words[k], bound,
                             lambda att, k=k: philox_py([c[0], c[1], c[2], c[3] | (att << 8)], key)[k])
                    for k in range(4)]
        assert a[row].tolist() == expected


def test_bound_just_above_half_rejects_half_and_stays_uniform():
    """bound = 2^31 + 1: about half the words are rejected and redrawn; results agree, are in range and
    uniform (chi-square over 16 equal-width bins, fixed seed, p > 1e-4)."""
    bound = (1 << 31) + 1
    n = 20000
    seed = 0x5EED_0F_7E57
    counters = torch.stack([torch.arange(n), torch.full((n,), 5), torch.zeros(n, dtype=torch.int64),
                            torch.zeros(n, dtype=torch.int64)], dim=1)
    raw = rhmfast.philox_uniform(counters, seed)
    threshold = ((1 << 32) - bound) % bound
    rejected = ((raw * bound) & MASK32) < threshold
    assert 0.45 < rejected.double().mean().item() < 0.55  # the rejection path really runs
    a = rhmfast.philox_uniform(counters, seed, bound)
    b = philox_ref.philox_uniform(counters, seed, bound)
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() < bound
    # Accepted words keep their multiply-shift value; rejected ones were redrawn.
    assert torch.equal(a[~rejected], ((raw * bound) >> 32)[~rejected])
    bins = torch.bincount((a * 16 // bound).reshape(-1), minlength=16)
    assert stats.chisquare(bins.numpy()).pvalue > 1e-4


@pytest.mark.slow
def test_bounded_mode_terminates_for_any_counter():
    """Any counter with entries in [0, 2^32) is valid: bounded mode must terminate for c3 = 0xFFFFFFFF
    too (word 2 of this block is rejected for bound 2^31 + 1), in the extension and in the reference.
    Run in subprocesses with a time limit, since the failure mode is an endless loop."""
    calls = {"op": "rhmfast.philox_uniform(c, -3, (1 << 31) + 1)",
             "reference": "rhmfast.reference.philox.philox_uniform(c, (1 << 64) - 3, (1 << 31) + 1)"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = {}
    for impl, call in calls.items():
        code = textwrap.dedent(f"""
            import sys, torch, rhmfast, rhmfast.reference.philox
            c = torch.tensor([[0xFFFFFFFF] * 4], dtype=torch.int64)
            print("imported", flush=True)
            out = {call}
            assert 0 <= int(out.min()) and int(out.max()) < (1 << 31) + 1
            print("ok")
        """)
        procs[impl] = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    # The limit runs from the moment a child has imported torch (slow when both start at once), so it
    # times the call alone.
    hung = []
    for impl, proc in procs.items():
        assert proc.stdout.readline().strip() == "imported", proc.stderr.read()[-2000:]
        try:
            proc.wait(timeout=12)
            out, err = proc.stdout.read(), proc.stderr.read()
            assert proc.returncode == 0 and out.strip() == "ok", err[-2000:]
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            hung.append(impl)
    assert not hung, f"philox_uniform did not return within 12 s of the import (endless rejection loop): {hung}"


def test_bound_one_is_zero():
    """bound = 1 maps every word to 0."""
    counters = torch.arange(40, dtype=torch.int64).reshape(10, 4)
    assert (rhmfast.philox_uniform(counters, 9, 1) == 0).all()
    assert (philox_ref.philox_uniform(counters, 9, 1) == 0).all()


@pytest.mark.parametrize("impl", ["op", "reference"])
@pytest.mark.parametrize("counter,bound,error,match", [
    (torch.zeros(2, 4, dtype=torch.int64), 1 << 32, ValueError, "bound"),
    (torch.zeros(2, 4, dtype=torch.int64), -1, ValueError, "bound"),
    (torch.full((2, 4), 1 << 32, dtype=torch.int64), 0, ValueError, "counter"),
    (torch.full((2, 4), -1, dtype=torch.int64), 0, ValueError, "counter"),
    (torch.zeros(2, 3, dtype=torch.int64), 0, (ValueError, RuntimeError), "counter"),
    (torch.zeros(2, 4, dtype=torch.int32), 0, (ValueError, TypeError), "counter"),
], ids=["bound-2^32", "bound-negative", "counter-2^32", "counter-negative", "shape", "dtype"])
def test_invalid_arguments(impl, counter, bound, error, match):
    """Bad bounds, counters out of [0, 2^32), wrong shapes and dtypes are rejected with a clear message."""
    with pytest.raises(error, match=match):
        IMPLEMENTATIONS[impl](counter, 0, bound)
