"""The CPU sampler has scalar, AVX2 and AVX-512 Philox paths and lane paths for small trees (sixteen
samples per AVX-512 register, eight per AVX2 register); the machine picks the widest it supports. RHMFAST_CPU_SIMD caps the choice, so each
narrower path runs here in a subprocess and must give the widest path's bits."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import rhmfast

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small trees (lane paths: iid, <= 1023 internal nodes, no tree, n >= 16 with a ragged tail) and larger
# ones (per-sample path), starts that cross 2^32.
WORKLOAD = """
import sys, torch, rhmfast
out = {}
for k, (v, m, s, L) in enumerate([(32, 8, 2, 3), (64, 16, 2, 4), (7, 3, 3, 2), (16, 4, 2, 6), (8, 4, 3, 4)]):
    g = rhmfast.RHM(v, m, s, L, seed=k)
    out[f"{k}-x"], out[f"{k}-y"] = g.sample(1000 + k, seed=99, start=(1 << 32) - 500)
    out[f"{k}-tree"] = g.sample(37, seed=99, return_tree=True)[2][1]
out["simd"] = rhmfast.backends()["cpu_simd"]
torch.save(out, sys.argv[1])
"""


def run_with_cap(cap: str, path: str) -> dict:
    env = dict(os.environ, RHMFAST_CPU_SIMD=cap)
    env.pop("RHMFAST_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", WORKLOAD, path], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(path)


@pytest.mark.skipif(not rhmfast.backends()["extension"], reason="the SIMD paths belong to the extension")
@pytest.mark.parametrize("cap", ["scalar", "avx2"])
def test_capped_simd_paths_give_the_same_bits(cap, tmp_path):
    order = ["scalar", "avx2", "avx512"]
    if order.index(cap) >= order.index(rhmfast.backends()["cpu_simd"]):
        pytest.skip(f"this CPU's widest path is {rhmfast.backends()['cpu_simd']}: capping at {cap} changes nothing")
    widest = run_with_cap("", str(tmp_path / "widest.pt"))
    capped = run_with_cap(cap, str(tmp_path / f"{cap}.pt"))
    widest_path, capped_path = widest.pop("simd"), capped.pop("simd")
    assert capped_path == cap and widest_path != cap  # the cap took effect
    assert widest.keys() == capped.keys()
    for key in widest:
        assert torch.equal(widest[key], capped[key]), key


def _assert_window_matches_reference(rules, n_classes, seed, hit):
    """Samples hit - 20 .. hit + 27 without the latent tree (the lane paths' territory): kernel and
    reference agree, and the reference does take the rejection branch at `hit`."""
    from rhmfast.reference import rhm_sample as ref
    from rhmfast.ops.rhm_sample import rhm_sample

    start = hit - 20
    a = rhm_sample(rules, n_classes, 48, seed, start, "iid", torch.uint8, False)
    b = ref.rhm_sample(rules, n_classes, 48, seed, start, "iid", torch.uint8, False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.skipif(not rhmfast.backends()["extension"], reason="the SIMD paths belong to the extension")
def test_lane_path_redoes_a_rejected_label():
    """With n_classes = 244 the label word of sample 9458959 under seed 12345 is rejected by
    uniform_below (found by a search over Philox words, checked here): the lane path must hand that
    sample to the exact path."""
    from rhmfast.reference.philox import philox4x32_10

    seed, hit, n_classes = 12345, 9458959, 244
    word = philox4x32_10(torch.tensor([0]), hit & 0xFFFFFFFF, hit >> 32, 0, seed, 0)[0].item()
    assert (word * n_classes) % (1 << 32) < ((1 << 32) - n_classes) % n_classes  # really rejected
    rules = torch.randint(0, 250, (3, 250, 3, 2), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    _assert_window_matches_reference(rules, n_classes, seed, hit)


@pytest.mark.skipif(not rhmfast.backends()["extension"], reason="the SIMD paths belong to the extension")
def test_lane_path_redoes_a_rejected_rule_choice():
    """m close to 10^5 with small symbols: rejected rule-choice words occur within 2^16 samples; every
    window around one matches the reference (lane path, no tree)."""
    from rhmfast.reference import rhm_sample as ref

    m = max(range(100_000, 100_400), key=lambda c: ((1 << 32) - c) % c)
    rules = torch.randint(0, 3, (2, 3, m, 2), dtype=torch.int32, generator=torch.Generator().manual_seed(1))
    seed = 777
    index = torch.arange(20, 1 << 16, dtype=torch.int64)
    words = ref.iid_words(seed, index, 4)[:, 1:]
    threshold = ((1 << 32) - m) % m
    hits = index[(((words * m) & 0xFFFFFFFF) < threshold).any(1)][:3].tolist()
    assert hits, "no rejected rule-choice word in the scanned range"
    for hit in hits:
        _assert_window_matches_reference(rules, 3, seed, hit)


@pytest.mark.skipif(not rhmfast.backends()["extension"], reason="the SIMD paths belong to the extension")
@pytest.mark.parametrize("v, m, L, n_classes, n", [(16, 4, 6, None, 3000), (32, 8, 4, None, 50_000),
                                                    (4, 2, 2, None, 5000), (16, 4, 3, 4, 4001), (3, 1, 4, None, 300)])
def test_paired_last_levels_match_reference(v, m, L, n_classes, n):
    """For s = 2 and m a power of two, calls whose samples use each entry of the paired table
    (R·m^3 entries, R = max(n_classes, v)) at least four times on average expand the last two levels
    with one look-up on the AVX2 path; every size here is past that threshold, and root rows of
    symbols that cannot occur (n_classes < v) must not matter."""
    from rhmfast.reference import rhm_sample as ref
    from rhmfast.ops.rhm_sample import rhm_sample

    g = rhmfast.RHM(v, m, 2, L, n_classes=n_classes, seed=L)
    rows = max(g.n_classes, v)
    assert n * 2 ** (L - 2) >= 4 * rows * m ** 3  # the table is made
    table = g.table("cpu")
    a = rhm_sample(table, g.n_classes, n, 11, 5, "iid", torch.uint8, False)
    b = ref.rhm_sample(table, g.n_classes, n, 11, 5, "iid", torch.uint8, False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
