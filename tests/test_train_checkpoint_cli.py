"""rhmfast train --checkpoint_every: a run killed with SIGKILL resumes from its checkpoint when the same
command runs again, and stores the record an uninterrupted run stores."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import rhmfast.__main__ as cli

# ~0.2 s an epoch on one core: long enough to kill it between two checkpoints
RUN = ["--v", "8", "--m", "4", "--L", "3", "--P", "4000", "--n_test", "256", "--width", "32", "--max_epochs", "40",
       "--loss_threshold", "1e-9", "--seed_sample", "3"]


def _record(store) -> dict:
    (name,) = [n for n in os.listdir(store) if n.endswith(".json")]
    with open(os.path.join(store, name)) as f:
        record = json.load(f)
    result = record["result"]
    return dict(curve=result["curve"], error=record["test_error"], samples=result["samples_seen"],
                stopped_by=result["stopped_by"])


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_record(tmp_path, capsys):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    cli.main(["train", *RUN, "--out", str(whole)])
    command = [sys.executable, "-m", "rhmfast", "train", *RUN, "--checkpoint_every", "2", "--out", str(killed)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed.exists() and any(n.endswith(".ckpt") for n in os.listdir(killed))):
        assert time.monotonic() < deadline and process.poll() is None, "no checkpoint appeared"
        time.sleep(0.05)
    time.sleep(0.1)  # into the next epochs
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not any(n.endswith(".json") for n in os.listdir(killed))  # nothing stored: the run died mid-way
    capsys.readouterr()
    cli.main(["train", *RUN, "--checkpoint_every", "2", "--out", str(killed)])
    assert "resuming from the checkpoint" in capsys.readouterr().out
    assert _record(killed) == _record(whole)
    assert not any(n.endswith(".ckpt") for n in os.listdir(killed))  # spent once the record is stored


@pytest.mark.parametrize("extra, fragment", [
    (["--checkpoint_every", "-1"], "--checkpoint_every must be >= 0"),
    (["--checkpoint_every", "2", "--trainer", "layerwise"], "--checkpoint_every checkpoints end-to-end SGD runs"),
    (["--checkpoint_every", "2", "--model", "ren"], "--checkpoint_every checkpoints end-to-end SGD runs"),
])
def test_checkpoint_every_is_refused_where_it_cannot_work(tmp_path, capsys, extra, fragment):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", *RUN, *extra, "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_a_checkpoint_of_another_run_is_refused(tmp_path, capsys):
    from rhmfast.studies.grid import expand
    from rhmfast.studies.runs import config_hash

    store = tmp_path / "s"
    store.mkdir()
    args = cli.build_parser().parse_args(["train", *RUN])
    (config,) = expand({k: getattr(args, k) for k in ("v", "m", "L", "P", "n_test", "width", "max_epochs",
                                                      "loss_threshold", "seed_sample")})
    (store / f"{config_hash(config)}.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", *RUN, "--checkpoint_every", "2", "--out", str(store)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and ".ckpt" in err and "delete it" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_killed_sweep_resumes_its_runs_from_their_checkpoints(tmp_path):
    # Two runs on one worker; the sweep (and its worker) is killed while the first has a checkpoint.
    grid = ["--v", "8", "--m", "4", "--L", "3", "--P", "3000,4000", "--n_test", "256", "--width", "32",
            "--max_epochs", "40", "--loss_threshold", "1e-9", "--workers", "1"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    cli.main(["sweep", *grid, "--out", str(whole)])
    command = [sys.executable, "-m", "rhmfast", "sweep", *grid, "--checkpoint_every", "2", "--out", str(killed)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (killed.exists() and any(n.endswith(".ckpt") for n in os.listdir(killed))):
        assert time.monotonic() < deadline and process.poll() is None, "no checkpoint appeared"
        time.sleep(0.05)
    time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and its worker
    process.wait()
    cli.main(["sweep", *grid, "--checkpoint_every", "2", "--out", str(killed)])

    def records(store):
        out = {}
        for name in sorted(n for n in os.listdir(store) if n.endswith(".json")):
            with open(os.path.join(store, name)) as f:
                record = json.load(f)
            out[name] = (record["result"]["curve"], record["test_error"], record["result"]["samples_seen"])
        return out

    assert records(killed) == records(whole) and len(records(whole)) == 2
    assert not any(n.endswith(".ckpt") for n in os.listdir(killed))
