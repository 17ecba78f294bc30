"""Markdown summary of a saved kernel-benchmark run (pytest-benchmark JSON of test_kernels_*.py): the
machine, then one table per group (op, shape, mode, device) with each provider's times, rates and the
ratio of its median to rhmfast's (> 1: rhmfast is faster).

    python benchmarks/kernels_report.py RUN.json [--out RUN.md]   # stdout without --out
    python benchmarks/kernels_report.py --tag                      # the machine part of result names
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

REFERENCE_PROVIDER = "rhmfast"


def tag() -> str:
    """The machine part of a result file's name, as the bench_*.py scripts name theirs: the CPU's vector
    width ("cpu-avx2"), and "_cuda" where the CUDA cases run too."""
    import torch
    from common import device_tag

    import rhmfast

    cuda = torch.cuda.is_available() and rhmfast.backends()["cuda_kernels"]
    return device_tag("cpu") + ("_cuda" if cuda else "")


def seconds(t: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t * 1e9:.3g} ns"


def rate(info: dict) -> str:
    if "gflop_per_s" in info:
        return f"{info['gflop_per_s']:.1f} GFLOP/s"
    if "gb_per_s" in info:
        return f"{info['gb_per_s']:.2f} GB/s"
    return ""


def machine_text(run: dict) -> str:
    info = run["machine_info"]
    ours = info.get("rhmfast", {})
    commit = run.get("commit_info", {})
    parts = [f"{run['datetime'][:10]}", ours.get("cpu") or info.get("cpu", {}).get("brand_raw", "?")]
    if ours:
        parts += [ours["cpu_flags"], f"{ours['cores']} cores", f"torch {ours['torch']}",
                  f"{ours['torch_threads']} threads", f"float32 CPU GEMMs: {ours['cpu_gemm']}"]
        if "gpu" in ours:
            tf32 = ours["cudnn_allow_tf32"] or ours["cuda_matmul_allow_tf32"]
            parts += [ours["gpu"], f"CUDA {ours['cuda']}", f"TF32 {'on' if tf32 else 'off'}"]
    if commit.get("id"):
        parts.append(f"commit {commit['id'][:10]}{' (with uncommitted changes)' if commit.get('dirty') else ''}")
    return "; ".join(parts)


def report(run: dict) -> str:
    groups: dict[str, list[dict]] = {}
    for b in run["benchmarks"]:
        groups.setdefault(b["group"], []).append(b)
    lines = ["# Kernel benchmarks (pytest-benchmark)", "", machine_text(run) + ".", "",
             ("Times per call; the providers are described in `benchmarks/test_kernels_*.py`. x rhmfast = "
              "provider median / rhmfast median (> 1: rhmfast faster). Each provider's rounds run in one block, "
              "not interleaved with the others', and the same benchmark run twice can differ by up to 1.3x "
              "(benchmarks/README.md): read ratios within one run."), "",
             "## Overview", "", "| group | rhmfast median | x rhmfast of the others |", "|---|---:|---|"]
    for group, rows in sorted(groups.items()):
        ours = next((r for r in rows if r["extra_info"]["provider"] == REFERENCE_PROVIDER), None)
        if ours is None:
            continue
        others = ", ".join(f"{r['extra_info']['provider']} {r['stats']['median'] / ours['stats']['median']:.2f}"
                           for r in sorted(rows, key=lambda r: r["name"]) if r is not ours)
        lines.append(f"| {group} | {seconds(ours['stats']['median'])} | {others} |")
    for group, rows in sorted(groups.items()):
        ours = next((r for r in rows if r["extra_info"]["provider"] == REFERENCE_PROVIDER), None)
        lines += ["", f"## {group}", "",
                  "| provider | median | min | mean | stddev | rounds | samples/s | rate | x rhmfast |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(rows, key=lambda r: r["name"]):
            s, info = r["stats"], r["extra_info"]
            ratio = f"{s['median'] / ours['stats']['median']:.2f}" if ours else ""
            lines.append(f"| {info['provider']} | {seconds(s['median'])} | {seconds(s['min'])} | {seconds(s['mean'])} "
                         f"| {seconds(s['stddev'])} | {s['rounds']} | {info['samples_per_s']:.3g} | {rate(info)} "
                         f"| {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="a JSON file written by --benchmark-save or --benchmark-json")
    parser.add_argument("--out", help="markdown path (default: stdout)")
    parser.add_argument("--tag", action="store_true", help="print the machine tag of result names and exit")
    args = parser.parse_args(argv)
    if args.tag:
        print(tag())
        return
    if not args.run:
        parser.error("a run's JSON file is needed (or --tag)")
    with open(args.run) as f:
        text = report(json.load(f))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print("wrote", args.out)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
