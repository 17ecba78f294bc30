"""The CPU sampler has scalar, AVX2 and AVX-512 Philox paths and a sixteen-samples-per-register path
for small trees; the machine picks the widest it supports. RHMFAST_CPU_SIMD caps the choice, so each
narrower path runs here in a subprocess and must give the widest path's bits."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import rhmfast

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small trees (lane path: iid, <= 31 internal nodes, no tree, n >= 16 with a ragged tail) and larger
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
    widest = run_with_cap("", str(tmp_path / "widest.pt"))
    capped = run_with_cap(cap, str(tmp_path / f"{cap}.pt"))
    order = ["scalar", "avx2", "avx512"]
    widest_path, capped_path = widest.pop("simd"), capped.pop("simd")
    assert capped_path == order[min(order.index(cap), order.index(widest_path))]  # the cap took effect
    assert widest.keys() == capped.keys()
    for key in widest:
        assert torch.equal(widest[key], capped[key]), key
