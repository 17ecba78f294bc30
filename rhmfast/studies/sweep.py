"""``rhmfast sweep``: run a grid of configs on an engine into a result store, resumably.

Runs already stored are skipped, so running the same sweep again resumes it; corrupt records are moved
aside and their runs redone. One progress bar counts the whole grid (stored runs included); each
finished run prints a summary line. A sweep holds its store's lock while it runs (a second sweep into
the same store is refused, or waits); Ctrl-C stops it with every finished run stored
(SweepInterrupted carries the counts). A record that cannot be written (a full disk) stops it too: the
StoreWriteError, its counts in ``outcome``, says why; the records written before are kept, no temporary
is left, and the same sweep run again does only the missing runs.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import os
import time

from tqdm.auto import tqdm

from rhmfast._checks import check_int
from rhmfast.studies.engines import ENGINES, execute
from rhmfast.studies.runs import config_hash, learner_name, varying_keys
from rhmfast.studies.store import ResultStore, StoreLockedError, StoreWriteError  # noqa: F401 (raised by run_sweep)

# Keys that identify a setting in summaries; other keys that vary for a learner are listed too.
_SUMMARY_KEYS = ("v", "m", "s", "L", "gate", "wiring", "fan_in", "d", "level_size")


def _setting(c: dict) -> str:
    if c.get("data", "rhm") == "rhm":
        return f"v={c['v']} m={c['m']} s={c['s']} L={c['L']}"
    # d and level_size when given (a tree's d may be a multiple of fan_in^L): settings that differ only in d
    # must not share a line
    sizes = "".join(f" {k}={c[k]}" for k in ("d", "level_size") if c.get(k) is not None)
    return f"{c['gate']} {c['wiring']} fan_in={c['fan_in']} L={c['L']}{sizes}"


def describe(configs: list[dict]) -> str:
    """The grid, one line per (learner, setting, other parameters varying for that learner): its P
    values and seeds."""
    varying = varying_keys(configs, ("P", "seed_sample", "seed_model") + _SUMMARY_KEYS)
    groups = collections.OrderedDict()
    for c in configs:
        learner = learner_name(c)
        head = (learner, _setting(c)) + tuple(f"{k}={c[k]}" for k in varying[learner])
        ps, seeds = groups.setdefault(head, (set(), set()))
        ps.add(c["P"])
        seeds.add((c["seed_sample"], c["seed_model"]))
    lines = [f"{len(configs)} runs"]
    for head, (ps, seeds) in groups.items():
        seed_text = ",".join(str(a) if a == b else f"{a}/{b}" for a, b in sorted(seeds))
        lines.append(f"  {head[0]:<22} {head[1]} {' '.join(head[2:])}".rstrip()
                     + f": {len(ps)} P in [{min(ps)}, {max(ps)}] x {len(seeds)} seeds ({seed_text})")
    return "\n".join(lines)


def summary(record: dict) -> str:
    c = record["config"]
    error = "diverged" if record["test_error"] is None else f"test error {record['test_error']:.4f}"
    return (f"{record['learner']} {_setting(c)} P={c['P']} seed={c['seed_sample']}: "
            f"{error} ({record['result']['wall_time_s']:.1f} s)")


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C ended a sweep; every run that finished is stored. ``outcome`` is run_sweep's dict of counts
    (``interrupted`` True, ``not_run``: the runs neither stored nor failed)."""

    def __init__(self, outcome: dict):
        super().__init__("sweep interrupted")
        self.outcome = outcome


def run_sweep(configs: list[dict], out: str, *, engine: str = "local", progress: bool = True, wait: bool = False,
              checkpoint_every: int = 0, **engine_options) -> dict:
    """Run every config not yet stored in ``out``; returns counts and the failures [(config, reason)].
    checkpoint_every > 0: end-to-end SGD runs save their state every checkpoint_every epochs to
    ``out/<hash>.ckpt`` and resume from it after a kill (the file is removed once the record is stored; with
    Ray, the store must be on a file system the workers share).
    Holds the store's lock throughout: another process holding it raises StoreLockedError, or with wait
    the sweep waits for it. Ctrl-C raises SweepInterrupted (a KeyboardInterrupt) after the engine stopped;
    a record that cannot be written (a full disk) stops the engine and raises StoreWriteError, its
    ``outcome`` the counts (the unwritten run among those ``not_run``)."""
    store = ResultStore(out)
    if checkpoint_every:
        engine_options["run"] = functools.partial(execute, checkpoint_dir=os.path.abspath(store.path),
                                                  checkpoint_every=check_int("checkpoint_every", checkpoint_every, 0))

    def waiting(pid):
        print(f"waiting for {'process ' + str(pid) if pid else 'another process'} to release the store {out}")

    with store.lock(wait=wait, on_wait=waiting):
        counts = dict(total=len(configs), stored_before=0, ran=0, failures=[], interrupted=False)
        started = time.perf_counter()

        def stopped(**flags) -> dict:
            return dict(counts, **flags, seconds=time.perf_counter() - started,
                        not_run=len(configs) - counts["stored_before"] - counts["ran"] - len(counts["failures"]))

        try:
            _run_locked(store, configs, engine, progress, engine_options, counts)
        except KeyboardInterrupt:
            raise SweepInterrupted(stopped(interrupted=True)) from None
        except StoreWriteError as error:  # raised by on_result; the engine has stopped its workers
            error.outcome = stopped()
            raise
    return dict(counts, seconds=time.perf_counter() - started, not_run=0)


def _run_locked(store: ResultStore, configs: list[dict], engine: str, progress: bool, engine_options: dict,
                counts: dict) -> None:
    store.clean_temporaries()
    todo = [c for c in configs if store.read(config_hash(c), move_aside=True) is None]
    stored = counts["stored_before"] = len(configs) - len(todo)
    for name, why in store.corrupt:
        print(f"corrupt record {name} moved aside to {store.moved.get(name, '?')} ({why}); its run is redone")
    print(f"{len(configs)} runs in the grid: {stored} already stored, {len(todo)} to run on {engine} -> {store.path}")
    with tqdm(total=len(configs), initial=stored, unit="run", desc="sweep", disable=not progress) as bar:
        def on_result(config, record):
            store.write(record)
            with contextlib.suppress(FileNotFoundError):  # a checkpoint is spent once its record is stored
                os.remove(os.path.join(store.path, f"{record['hash']}.ckpt"))
            counts["ran"] += 1
            bar.update(1)
            bar.write(summary(record))

        def on_failure(config, reason):
            counts["failures"].append((config, reason))
            bar.write(f"FAILED {learner_name(config)} {config_hash(config)}: {reason.strip().splitlines()[-1]}")

        if todo:
            ENGINES[engine](**engine_options).map(todo, on_result, on_failure)
