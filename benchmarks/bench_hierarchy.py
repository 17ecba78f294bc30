"""Throughput of label-hierarchy sampling (rhmfast.data.LabelHierarchy, CircuitTeacher) against a
straightforward per-level torch baseline: x from torch.randint, then a Python loop over the labels, each
gathering its parents' values and looking up its truth table.

    python benchmarks/bench_hierarchy.py [--quick] [--out benchmarks/results]

Prints one table (samples/s, speedup over the baseline) and writes JSON + markdown. CPU only: the sampler
is CPU code (its Philox words come from the CPU kernel).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rhmfast  # noqa: E402
from common import device_tag, machine, median_time, write_results  # noqa: E402
from rhmfast.data import CircuitTeacher, LabelHierarchy  # noqa: E402

CONFIGS = {
    "parity tree, fan-in 2, d=256, 8 levels": lambda: LabelHierarchy(
        256, [128, 64, 32, 16, 8, 4, 2, 1], 2, gate="parity", wiring="tree"),
    "majority, random, fan-in 3, d=256, levels 64/16/4/1": lambda: LabelHierarchy(
        256, [64, 16, 4, 1], 3, gate="majority"),
    "junta, random, fan-in 4, d=256, levels 64/16/4/1": lambda: LabelHierarchy(
        256, [64, 16, 4, 1], 4, gate="junta"),
    "circuit teacher d=256, depth 4, width 128, fan-in 3, 8 labels/layer, k=5": lambda: CircuitTeacher(
        256, 4, 128, 3, 8, 5, seed=0),
}


def per_label_baseline(hierarchy, n, generator):
    """x by torch.randint, then label after label: gather the parents, index the truth table."""
    x = torch.randint(0, 2, (n, hierarchy.d), generator=generator, dtype=torch.int8) * 2 - 1
    values = {}
    columns = x.long()
    hidden = [g for level in getattr(hierarchy, "gate_levels", []) for g in level.tolist()]
    labels = (torch.arange(hierarchy.n_labels) + hierarchy.d).tolist()
    # a circuit's hidden gates first (each layer's labels read only hidden gates of their layer)
    for node in hidden + labels:
        entry = torch.zeros(n, dtype=torch.int64)
        for k, parent in enumerate(hierarchy.node_parents(node).tolist()):
            bit = (columns[:, parent] if parent < hierarchy.d else values[parent]) > 0
            entry |= bit.long() << k
        values[node] = hierarchy.node_table(node).long()[entry]
    y = torch.stack([values[node] for node in labels], 1).to(torch.int8)
    return x, y


def run(quick: bool, n: int) -> list[dict]:
    rows = []
    generator = torch.Generator().manual_seed(0)
    repeats = 3 if quick else 7
    for name, build in CONFIGS.items():
        hierarchy = build()
        n_base = max(1024, n // 8)  # the baseline is slow; its rate does not depend on n at these sizes
        mine = median_time(lambda: hierarchy.sample(n, seed=1), repeats=repeats)
        base = median_time(lambda: per_label_baseline(hierarchy, n_base, generator), repeats=repeats)
        rows.append(dict(config=name, d=hierarchy.d, n_labels=hierarchy.n_labels, n=n, n_baseline=n_base,
                         rhmfast_samples_per_s=n / mine, baseline_samples_per_s=n_base / base,
                         speedup=(n / mine) / (n_base / base)))
    return rows


def table(rows) -> str:
    lines = ["| hierarchy | labels | samples/call | rhmfast samples/s | baseline samples/s | x baseline |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['n_labels']} | {r['n']} | {r['rhmfast_samples_per_s']:.3g} | "
                     f"{r['baseline_samples_per_s']:.3g} | {r['speedup']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (a smoke run)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--n", type=int, default=None, help="samples per call (default 2^20, 2^16 with --quick)")
    args = parser.parse_args(argv)
    n = args.n or (1 << 16 if args.quick else 1 << 20)
    info = machine()
    info["backends"] = rhmfast.backends()
    rows = run(args.quick, n)
    text = table(rows)
    print(text)
    markdown = (f"# Label-hierarchy sampling throughput\n\n{info['date']}, torch {info['torch']}, {info['cpu']} "
                f"({info['cpu_flags']}; {info['torch_threads']} threads). Medians of {3 if args.quick else 7} "
                f"calls; the baseline runs n/8 samples per call.\n\n{text}\n")
    name = "hierarchy_" + device_tag("cpu") + ("_quick" if args.quick else "")
    paths = write_results(name, {"machine": info, "rows": rows}, markdown, args.out)
    print("\nwrote", *paths)


if __name__ == "__main__":
    main()
