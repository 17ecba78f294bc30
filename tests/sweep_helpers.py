"""Shared pieces of the sweep tests: a grid of tiny runs, and run functions that make workers die.

The run functions are called in engine worker processes; they find their marker folder through the
environment (inherited by spawned workers), so they need no arguments beyond the engine's."""
from __future__ import annotations

import os
import signal

from rhmfast.studies.engines import execute
from rhmfast.studies.runs import config_hash

# 8 runs of a few hundred SGD steps or one Ren fit each: ~0.1-1 s per run on one core.
TINY_FLAGS = dict(v="4", settings="2,2", P="12,24", model="hcnn,ren", seeds="0,1", n_test="8", width="8",
                  max_steps="200", ren_features="8")
TINY_ARGV = [f"--{key}={value}" for key, value in TINY_FLAGS.items()]
MARKERS = "RHMFAST_TEST_MARKERS"


def _marker(config: dict) -> str:
    return os.path.join(os.environ[MARKERS], config_hash(config))


def die_first_time(config: dict, threads: int, engine: str, device: str) -> dict:
    """SIGKILL this worker the first time a config runs; run it normally when it is retried."""
    if not os.path.exists(_marker(config)):
        open(_marker(config), "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return execute(config, threads, engine, device)


def always_die(config: dict, threads: int, engine: str, device: str) -> dict:
    with open(_marker(config), "a") as f:
        f.write("x")
    os.kill(os.getpid(), signal.SIGKILL)


def raise_error(config: dict, threads: int, engine: str, device: str) -> dict:
    raise RuntimeError(f"deliberate failure of {config_hash(config)}")


def pack_dies_after_first_run(configs: list, threads: int, engine: str, device: str, emit=None) -> list:
    """A pack's first try: hand on its first finished run, then SIGKILL this worker (the runs still
    training are lost); the retry (the unfinished runs only) runs normally. The marker is named by the hash
    of the pack's first config and records the sizes of the packs that ran."""
    from rhmfast.studies.engines import execute_pack

    marker = os.path.join(os.environ[MARKERS], "pack-" + config_hash(configs[0]))
    first_try = not any(name.startswith("pack-") for name in os.listdir(os.environ[MARKERS]))
    with open(marker, "a") as f:
        f.write(f"{len(configs)}\n")

    def emit_then_die(i, record):
        emit(i, record)
        if first_try:
            os.kill(os.getpid(), signal.SIGKILL)

    return execute_pack(configs, threads, engine, device, emit=emit_then_die)


def ctrl_c_enabled() -> None:
    """preexec_fn of a subprocess a test sends Ctrl-C: SIGINT back to its default disposition. A shell starts
    background jobs with SIGINT ignored, and Python then installs no KeyboardInterrupt handler, so a test run
    from such a job (some CI runners) would see the Ctrl-C ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_after_first_record(argv: list, store, env: dict, what: str = "sweep") -> tuple[int, str, str]:
    """Run `rhmfast *argv` (a sweep into `store`) in its own session, send it Ctrl-C (SIGINT to the sweep and
    its workers, as a terminal does) as soon as its first record is stored, and return (exit status, stdout,
    stderr). Asserts it was still running then: otherwise there was nothing to interrupt."""
    import subprocess
    import sys
    import time

    sweep = subprocess.Popen([sys.executable, "-m", "rhmfast", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env, start_new_session=True, preexec_fn=ctrl_c_enabled)
    deadline = time.monotonic() + 120
    while sweep.poll() is None and time.monotonic() < deadline:
        if os.path.isdir(store) and any(name.endswith(".json") for name in os.listdir(store)):
            break
        time.sleep(0.02)
    assert sweep.poll() is None, f"the {what} ended before its first record: nothing to interrupt"
    os.killpg(sweep.pid, signal.SIGINT)
    out, err = sweep.communicate(timeout=60)
    return sweep.returncode, out, err
