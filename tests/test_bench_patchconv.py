"""The layer benchmark (benchmarks/bench_patchconv.py): how many rounds its timing loop runs, that the
committed result files still render, and a run at toy sizes. The timings themselves are not tested."""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import pytest
import torch

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)
import bench_patchconv  # noqa: E402

CPU = torch.device("cpu")
MS = 2.0 ** -10  # about a millisecond, and exact in binary, so the fake clock's differences are exact


class FakeClock:
    """Stands in for time.perf_counter: candidates advance it by their nominal duration, so the round
    counts below are exact whatever the machine's load."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def candidate(self, seconds, calls):
        def run():
            calls.append(seconds)
            self.now += seconds
        return run


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(bench_patchconv.time, "perf_counter", fake)
    return fake


def test_short_calls_get_rounds_until_min_seconds(clock):
    calls = {"fast": [], "slower": []}
    cands = {"fast": clock.candidate(MS, calls["fast"]), "slower": clock.candidate(4 * MS, calls["slower"])}
    medians, samples = bench_patchconv.measure(cands, 3, CPU, min_seconds=100 * MS)
    assert samples == {"fast": 25, "slower": 25}  # the slowest candidate sets the count: 100 ms / 4 ms
    assert len(calls["fast"]) == len(calls["slower"]) == 25 + 1  # + the warm-up call
    assert medians == {"fast": MS, "slower": 4 * MS}


def test_rounds_are_at_least_the_minimum_and_at_most_the_cap(clock, monkeypatch):
    calls = []
    _, samples = bench_patchconv.measure({"a": clock.candidate(2 * MS, calls)}, 4, CPU, min_seconds=MS)
    assert samples == {"a": 4} and len(calls) == 5
    monkeypatch.setattr(bench_patchconv, "MAX_ROUNDS", 6)
    calls.clear()
    _, samples = bench_patchconv.measure({"a": clock.candidate(MS, calls)}, 2, CPU, min_seconds=10.0)
    assert samples == {"a": 6} and len(calls) == 7


def test_slow_candidates_run_two_rounds_without_warm_up_and_do_not_set_the_count(clock):
    calls = {"quick": [], "slow": []}
    cands = {"quick": clock.candidate(MS, calls["quick"]), "slow": clock.candidate(2.0, calls["slow"])}
    medians, samples = bench_patchconv.measure(cands, 3, CPU, slow=frozenset({"slow"}), min_seconds=20 * MS)
    assert samples == {"quick": 20, "slow": 2}  # rounds set by the 1 ms candidate (the 2 s one: 3)
    assert len(calls["slow"]) == 2 and len(calls["quick"]) == 20 + 1
    assert medians["slow"] == 2.0


def test_rows_carry_the_samples_and_the_speedup():
    rows = bench_patchconv.rows_for("patch_conv", "C=64", "fwd", ({"ours": 0.001, "theirs": 0.0015},
                                    {"ours": 40, "theirs": 2}), 2e6, "GFLOP/s", "ours")
    theirs = next(r for r in rows if r["candidate"] == "theirs")
    assert theirs["samples"] == 2
    assert theirs["rhmfast_speedup"] == pytest.approx(1.5)
    assert theirs["rate"] == pytest.approx(2e6 / 0.0015 / 1e9)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(BENCHMARKS, "results", "patchconv_*.json"))))
def test_committed_results_render(path):
    """Result files from before and after the adaptive round count both turn into the markdown table."""
    with open(path) as f:
        run = json.load(f)
    text = bench_patchconv.markdown(run["meta"], run["results"], run["goals"])
    assert text.count("\n| ") >= len(run["results"])
    assert "rounds" in text.splitlines()[2]
    if "min_seconds" in run["meta"]:
        assert all(f"| {r['samples']} |" in text for r in run["results"])


@pytest.mark.slow
def test_every_table_of_a_tiny_run_renders_with_its_goals():
    """The three benchmarks end to end at toy sizes (torch.compile included), so the script cannot rot
    between full runs: every config and mode has rhmfast's row as the reference of its speedups."""
    args = argparse.Namespace(dtype=torch.float32, widths=(16,), batch=4, trunk_widths=(16,), trunk_batch=2,
                              rounds=2, min_seconds=0.0, other_gemm=None)
    rows = (bench_patchconv.bench_patch_conv(args, CPU) + bench_patchconv.bench_token(args, CPU)
            + bench_patchconv.bench_trunk(args, CPU))
    assert {r["op"] for r in rows} == {"patch_conv", "token_patch_embed", "patch_conv_stack"}
    groups = {(r["op"], r["config"], r["mode"]) for r in rows}
    assert len(groups) == 2 * 2 + 2 * 2 + 2  # patch_conv and token: s = 2, 3; trunk: one; each fwd, fwd+bwd
    for group in groups:
        members = [r for r in rows if (r["op"], r["config"], r["mode"]) == group]
        assert sum(r["rhmfast_speedup"] == 1.0 for r in members) >= 1
        assert all(r["median_ms"] > 0 and r["samples"] >= 1 for r in members)
    goal_rows = bench_patchconv.goals(rows, CPU)
    assert {g["goal"].split()[0] for g in goal_rows} == {"token", "patch_conv"}  # the trunk goal is at width 256
    meta = dict(device="CPU: test", machine="test", torch=torch.__version__, threads=1, cpu_gemm="blas",
                dtype="torch.float32", date="today", rounds=2, min_seconds=0.0, quick=True)
    text = bench_patchconv.markdown(meta, rows, goal_rows)
    assert text.count("\n| ") >= len(rows) + len(goal_rows)
