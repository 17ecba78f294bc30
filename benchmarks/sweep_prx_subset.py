"""Wall time of a subset of the PRX-scale grid (benchmarks/sweeps/prx.toml), packed (the default --pack) and
unpacked (--pack 1), one sweep of each into fresh stores, side by side, 2 workers.

    python benchmarks/sweep_prx_subset.py [--settings "2,3"] [--out benchmarks/results/sweep_prx]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from bench_replicas import sweep_wall  # noqa: E402
from common import machine, write_results  # noqa: E402

from rhmfast.studies.grid import parse_values, sweep_configs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="2,3", help="the (m, L) settings of the subset")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "sweep_prx"))
    args = parser.parse_args()
    settings = [list(s) for s in parse_values("settings", args.settings)]
    configs = [c for c in sweep_configs({}, os.path.join(os.path.dirname(__file__), "sweeps", "prx.toml"))
               if [c["m"], c["L"]] in settings]
    alone = sweep_wall(configs, 1, args.workers)
    packed = sweep_wall(configs, None, args.workers)
    info = machine()
    markdown = (f"# PRX-scale grid, subset (m, L) in {args.settings}: packed against unpacked\n\n"
                f"{info['cpu']} ({info['cpu_flags']}), {info['cores']} cores, {args.workers} workers, torch "
                f"{info['torch']}, {info['date']}; one sweep of each into a fresh store.\n\n"
                "| runs | unpacked (s) | packed (s) | speed-up |\n|---|---|---|---|\n"
                f"| {len(configs)} | {alone:.0f} | {packed:.0f} | {alone / packed:.2f}x |\n")
    print(markdown)
    print("wrote", *write_results("subset_packed_vs_unpacked", dict(machine=info, settings=args.settings,
                                                                     runs=len(configs), unpacked_s=alone,
                                                                     packed_s=packed), markdown, args.out))


if __name__ == "__main__":
    main()
