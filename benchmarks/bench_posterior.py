"""Throughput of exact inference (the rhm_posterior op): rhmfast's kernel against the PyTorch reference
(rhmfast/reference/rhm_posterior.py, per-level batched tensor ops), in samples/s.

    python benchmarks/bench_posterior.py [--quick] [--device cpu|cuda] [--n N] [--out /tmp/bench_posterior]

Two workloads per grammar, on sampled strings with half the leaves hidden at random: "posterior" (the
upward pass: posterior and log_prob) and "+ leaves" (also the downward pass: leaf_posterior). On the CPU
each at one thread and at all threads. Medians of repeated calls; the kernel's outputs are checked against
the reference's first. Writes posterior_<device>.json and .md into --out.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rhmfast  # noqa: E402
from common import device_tag, machine, median_time, write_results  # noqa: E402
from rhmfast.data import inference  # noqa: E402
from rhmfast.reference import rhm_posterior as reference  # noqa: E402

GRAMMARS = [(8, 4, 2, 4), (32, 8, 2, 3), (8, 2, 2, 6)]  # (v, m, s, L)
WORKLOADS = {"posterior": False, "+ leaves": True}


def providers(grammar, device):
    table = grammar.table(device)
    owned = inference._owned(grammar, table.device)
    args = lambda tokens, mask, leaves: (table, owned, tokens, mask, grammar.n_classes, grammar.v, leaves)  # noqa: E731
    return {"kernel": lambda *a: torch.ops.rhmfast.rhm_posterior(*args(*a)),
            "reference": lambda *a: reference.rhm_posterior(*args(*a))}


def check_agreement(calls, tokens, mask):
    kernel, ref = calls["kernel"](tokens, mask, True), calls["reference"](tokens, mask, True)
    for a, b in zip(kernel, ref):
        if not torch.allclose(a, b, rtol=0, atol=1e-10, equal_nan=True):
            raise AssertionError(f"kernel and reference disagree by {(a - b).abs().nan_to_num().max():.3g}")


def run(device: str, n: int, repeats: int) -> list[dict]:
    threads = [1, os.cpu_count()] if device == "cpu" else [None]
    rows = []
    for v, m, s, L in GRAMMARS:
        grammar = rhmfast.RHM(v, m, s, L, seed=0)
        tokens, _ = grammar.sample(n, seed=1, device=device)
        mask = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(2)).to(device) < 0.5
        calls = providers(grammar, device)
        check_agreement(calls, tokens[:256], mask[:256])
        for workload, leaves in WORKLOADS.items():
            for count in threads:
                if count is not None:
                    torch.set_num_threads(count)
                row = dict(v=v, m=m, s=s, L=L, workload=workload, threads=count, n=n)
                for name, call in calls.items():
                    seconds = median_time(lambda: call(tokens, mask, leaves), repeats=repeats, device=device)
                    row[f"{name}_samples_per_s"] = n / seconds
                row["speedup"] = row["kernel_samples_per_s"] / row["reference_samples_per_s"]
                rows.append(row)
                print(f"v={v:3d} m={m:2d} s={s} L={L} {workload:9s} threads={count}: kernel "
                      f"{row['kernel_samples_per_s']:12,.0f}/s  reference {row['reference_samples_per_s']:12,.0f}/s  "
                      f"x{row['speedup']:.1f}", flush=True)
    return rows


def markdown(rows: list[dict], info: dict, device: str) -> str:
    lines = [f"# Exact inference (rhm_posterior), {device}", "",
             f"{info['cpu']} ({info['cores']} cores), torch {info['torch']}, {info['date']}"
             + (f", {info['gpu']}" if device == "cuda" else "") + ". Samples/s, medians; half the leaves hidden.", "",
             "| v | m | s | L | workload | threads | kernel | reference | speedup |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['v']} | {r['m']} | {r['s']} | {r['L']} | {r['workload']} | {r['threads'] or '-'} | "
                     f"{r['kernel_samples_per_s']:,.0f} | {r['reference_samples_per_s']:,.0f} | {r['speedup']:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--n", type=int, default=None, help="samples per call (default 16384, 1024 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small calls, few repeats")
    parser.add_argument("--out", default="/tmp/bench_posterior", help="folder of the result files")
    args = parser.parse_args(argv)
    if not rhmfast.backends()["extension"]:
        raise SystemExit("the compiled extension is not loaded: nothing to compare with the reference")
    n = args.n or (1024 if args.quick else 16384)
    initial_threads = torch.get_num_threads()
    try:
        rows = run(args.device, n, 3 if args.quick else 7)
    finally:
        torch.set_num_threads(initial_threads)
    info = machine()
    name = f"posterior_{device_tag(args.device)}" + ("_quick" if args.quick else "")
    paths = write_results(name, {"machine": info, "rows": rows}, markdown(rows, info, args.device), args.out)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
