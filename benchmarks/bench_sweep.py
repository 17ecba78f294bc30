"""Overhead of the sweep engines per run: a grid of tiny runs (a few milliseconds of training each) on the
local process pool and on a local Ray, against running the same configs in one loop in this process.

Each engine sweeps two grids, of --runs and of --runs/5 configs, into fresh stores (median over --repeats).
The difference of their wall times gives the marginal wall time per run; times the workers, minus the
time of one run in the in-process loop (store write included), it is the engine's overhead per run.
What the marginal cost does not explain of the small sweep's wall time is the engine's start-up
(worker processes and imports; for Ray, the local cluster).

    python benchmarks/bench_sweep.py [--runs 200] [--workers 2] [--repeats 3] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, write_results  # noqa: E402

import torch  # noqa: E402

from rhmfast.studies.engines import ENGINES, execute  # noqa: E402
from rhmfast.studies.grid import expand  # noqa: E402
from rhmfast.studies.store import ResultStore  # noqa: E402


def tiny_grid(runs: int) -> list[dict]:
    # One SGD step on 8 samples of a small grammar: the run itself costs a few milliseconds.
    return expand(dict(v=4, m=2, L=2, P=8, n_test=8, width=4, max_steps=1, seed_sample=list(range(runs))))


def sweep_once(engine: str, configs: list[dict], workers: int) -> float:
    """Wall time of one sweep into a fresh store, engine start-up included."""
    folder = tempfile.mkdtemp(prefix="rhmfast-bench-sweep-")
    store = ResultStore(folder)

    def on_failure(config, reason):
        raise RuntimeError(reason)

    started = time.perf_counter()
    ENGINES[engine](workers=workers).map(configs, lambda config, record: store.write(record), on_failure)
    wall = time.perf_counter() - started
    shutil.rmtree(folder)
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    configs = tiny_grid(args.runs)

    # The runs themselves, in this process, one after another, stored: what no engine can avoid.
    folder = tempfile.mkdtemp(prefix="rhmfast-bench-sweep-")
    store = ResultStore(folder)
    store.write(execute(configs[0]))  # warm-up: imports, first grammar, allocator
    started = time.perf_counter()
    for config in configs:
        store.write(execute(config))
    run_time = (time.perf_counter() - started) / len(configs)
    shutil.rmtree(folder)

    small = configs[: max(1, len(configs) // 5)]
    rows = [dict(engine="in-process loop", wall_s=run_time * len(configs), startup_s=0.0, overhead_ms=0.0,
                 runs_per_s=1 / run_time)]
    for engine in args.engines.split(","):
        if engine == "ray":
            try:
                import ray
            except ImportError:
                print("ray is not installed: skipping the Ray engine")
                continue
        walls = {}
        for name, grid in (("small", small), ("full", configs)):
            trials = []
            for _ in range(args.repeats):
                trials.append(sweep_once(engine, grid, args.workers))
                if engine == "ray":
                    ray.shutdown()  # every sweep pays the cluster start-up, as a fresh command would
            walls[name] = statistics.median(trials)
        marginal = (walls["full"] - walls["small"]) / (len(configs) - len(small))
        rows.append(dict(engine=engine, wall_s=walls["full"], startup_s=walls["small"] - marginal * len(small),
                         overhead_ms=1e3 * (marginal * args.workers - run_time), runs_per_s=len(configs) / walls["full"],
                         walls=walls))

    info = machine()
    lines = [f"# Sweep engine overhead: {len(configs)} tiny runs, {args.workers} workers", "",
             f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['date']}; medians of "
             f"{args.repeats} sweeps into fresh stores. One run alone takes {1e3 * run_time:.1f} ms in-process "
             "(stored).", "",
             "| engine | sweep wall (s) | start-up (s) | overhead per run (ms) | runs/s |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['wall_s']:.2f} | {r['startup_s']:.2f} | {r['overhead_ms']:.1f} | "
                     f"{r['runs_per_s']:.1f} |")
    lines += ["", f"start-up: the wall time of a {len(small)}-run sweep not explained by its runs (worker processes "
              "and imports; Ray: the local cluster). overhead per run: marginal wall time per run x workers, minus "
              "the in-process run time."]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    paths = write_results("sweep_engines_cpu", dict(machine=info, runs=len(configs), workers=args.workers,
                                                    run_time_s=run_time, rows=rows), markdown, args.out)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
