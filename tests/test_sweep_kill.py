"""`rhmfast sweep` killed with SIGKILL at random moments and restarted finishes with every run stored
exactly once: no half records, no duplicates, no run lost, and no worker left behind by a killed sweep."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import sweep_helpers
from rhmfast.studies.grid import expand
from rhmfast.studies.runs import config_hash
from rhmfast.studies.store import ResultStore


def _wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _records(store) -> int:
    return len([name for name in os.listdir(store) if name.endswith(".json")]) if store.exists() else 0


def _group_listing(pgid: int) -> str:
    return subprocess.run(["ps", "-o", "pid,stat,etime,cmd", "-g", str(pgid)], capture_output=True, text=True).stdout


@pytest.mark.slow
def test_sweep_killed_at_random_moments_resumes_to_every_run_exactly_once(tmp_path, rng):
    store = tmp_path / "store"
    grid = dict(sweep_helpers.TINY_FLAGS, P="6,12,24")  # 12 runs
    argv = [sys.executable, "-m", "rhmfast", "sweep", *[f"--{k}={v}" for k, v in grid.items()], "--workers", "2",
            "--out", str(store)]
    expected = sorted(config_hash(c) for c in expand(grid))
    # Three kills, each at a random moment after the attempt has stored a record of its own (so its
    # workers are busy mid-sweep), then a restart left to finish. How many runs an attempt completes
    # depends on the machine's speed, never the outcome.
    kills = 0
    for _ in range(3):
        before = _records(store)
        sweep = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        assert _wait_until(lambda: sweep.poll() is not None or _records(store) > before, 300), "the sweep stalled"
        time.sleep(rng.uniform(0.0, 1.0))
        if sweep.poll() is not None:
            break  # finished before this kill
        sweep.send_signal(signal.SIGKILL)  # the sweep process only: its workers must notice and stop
        sweep.wait()
        kills += 1
        assert _wait_until(lambda: _group_gone(sweep.pid), 60.0), \
            f"a killed sweep left workers running:\n{_group_listing(sweep.pid)}"
    else:
        sweep = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        sweep.wait(timeout=300)
    assert sweep.returncode == 0
    assert kills >= 1, "no kill landed: the test tested nothing"
    names = sorted(os.listdir(store))
    assert names == sorted(f"{h}.json" for h in expected)  # no temporaries, no quarantined records
    assert sorted(r["hash"] for r in ResultStore(store).records()) == expected
