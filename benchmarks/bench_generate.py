"""Throughput of RHM generation: rhmfast's kernels against the PyTorch reference and the per-level
gather that existing code uses, with token-id and one-hot float output.

    python benchmarks/bench_generate.py [--quick] [--out benchmarks/results]

Prints one table per device (samples/s, output GB/s, speedup over the per-level baseline) and writes
JSON + markdown. The memory write bandwidth of the machine (a large fill_) is measured in the same run,
so the kernel's output rate can be read against what the memory can take.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rhmfast  # noqa: E402
from common import device_tag, machine, median_time, write_results  # noqa: E402
from rhmfast.reference import rhm_sample as reference  # noqa: E402

CONFIGS = [(32, 8, 2, 3), (16, 4, 2, 6), (64, 16, 2, 4), (8, 4, 3, 4), (32, 8, 2, 10)]


def per_level_baseline(grammar, n, generator, device):
    """How existing code generates RHM data: a label draw, then per level a randint and a fancy-index."""
    x = torch.randint(0, grammar.n_classes, (n, 1), generator=generator, device=device)
    for rules in grammar._baseline_rules:
        choice = torch.randint(0, grammar.m, x.shape, generator=generator, device=device)
        x = rules[x, choice].flatten(1)
    return x.to(torch.uint8), torch.empty(0)


def write_bandwidth(device: str) -> float:
    """Bytes/s of a large fill_ (memory write bandwidth as torch sees it)."""
    buffer = torch.empty(1 << 29, dtype=torch.uint8, device=device)
    return buffer.numel() / median_time(lambda: buffer.fill_(7), repeats=5, device=device)


def copy_bandwidth(device: str) -> float:
    """Bytes written/s of a large device-to-device copy."""
    src = torch.empty(1 << 29, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    return src.numel() / median_time(lambda: dst.copy_(src), repeats=5, device=device)


def run(device: str, quick: bool, call_sizes: list[int]) -> list[dict]:
    rows = []
    for v, m, s, L in CONFIGS:
        grammar = rhmfast.RHM(v, m, s, L)
        grammar._baseline_rules = [r.to(device) for r in grammar.rules]
        d = grammar.input_dim
        n_onehot = max(64, (1 << (24 if quick else 27)) // (4 * v * d))  # ~128 MiB of float32 output
        generator = torch.Generator(device=device).manual_seed(0)
        table = grammar.table(device)
        cases = []
        for size, tokens in enumerate(call_sizes):
            n = max(256, (min(tokens, 1 << 22) if quick else tokens) // d)
            cases += [
                ("rhmfast", "tokens", tokens, lambda n=n: grammar.sample(n, seed=1, device=device), n, d),
                ("per-level torch", "tokens", tokens,
                 lambda n=n: per_level_baseline(grammar, n, generator, device), n, d),
            ]
            if size == 0:  # the reference is slow, and its speed does not depend on the call size
                n_ref = max(64, n // 32)
                cases.append(("torch reference", "tokens", tokens, lambda n_ref=n_ref: reference.rhm_sample(
                    table, grammar.n_classes, n_ref, 1, 0, "iid", torch.uint8, False), n_ref, d))
        cases += [
            ("rhmfast", "one-hot f32", None,
             lambda: rhmfast.one_hot(grammar.sample(n_onehot, seed=1, device=device)[0], v), n_onehot, 4 * v * d),
            ("per-level torch", "one-hot f32", None,
             lambda: F.one_hot(per_level_baseline(grammar, n_onehot, generator, device)[0].long(), v).float()
             .permute(0, 2, 1), n_onehot, 4 * v * d),
        ]
        mine = []
        for impl, output, call, fn, count, bytes_per_sample in cases:
            seconds = median_time(fn, repeats=3 if quick else 7, device=device)
            mine.append(dict(device=device, v=v, m=m, s=s, L=L, impl=impl, output=output, call=call, n=count,
                             tokens_per_call=count * d, seconds=seconds, samples_per_s=count / seconds,
                             tokens_per_s=count * d / seconds, gb_per_s=count * bytes_per_sample / seconds / 1e9))
        for r in mine:  # against the baseline's run at the same call size
            base = next(b for b in mine if b["impl"] == "per-level torch" and b["output"] == r["output"]
                        and b["call"] == r["call"])
            r["speedup_vs_per_level"] = r["samples_per_s"] / base["samples_per_s"]
        rows += mine
    return rows


def small_calls(device: str, batch: int, quick: bool) -> list[dict]:
    """Microseconds per call at one training batch of samples, where fixed per-call costs (argument checks,
    table preparation, dispatch) weigh more than the expansion itself."""
    rows = []
    generator = torch.Generator(device=device).manual_seed(0)
    for v, m, s, L in CONFIGS:
        grammar = rhmfast.RHM(v, m, s, L)
        grammar._baseline_rules = [r.to(device) for r in grammar.rules]
        repeats = 11 if quick else 101
        mine = median_time(lambda: grammar.sample(batch, seed=1, device=device), repeats=repeats, warmup=5,
                           device=device)
        base = median_time(lambda: per_level_baseline(grammar, batch, generator, device), repeats=repeats, warmup=5,
                           device=device)
        rows.append(dict(device=device, v=v, m=m, s=s, L=L, batch=batch, rhmfast_us=mine * 1e6,
                         per_level_us=base * 1e6, speedup_vs_per_level=base / mine))
    return rows


def small_table(rows) -> str:
    lines = ["| (v, m, s, L) | samples/call | rhmfast us/call | per-level torch us/call | x per-level |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| ({r['v']}, {r['m']}, {r['s']}, {r['L']}) | {r['batch']} | {r['rhmfast_us']:.1f} | "
                     f"{r['per_level_us']:.1f} | {r['speedup_vs_per_level']:.1f} |")
    return "\n".join(lines)


def goals(rows, call_sizes, bandwidths) -> list[dict]:
    """The issue's goals on token output, per device and call size: on the CPU rhmfast >= 20x the per-level
    baseline; on a GPU over 0.5 TB/s (reported against the device's measured copy bandwidth)."""
    out = []
    for device in sorted({r["device"] for r in rows}):
        for tokens in call_sizes:
            mine = {(r["v"], r["m"], r["s"], r["L"]): r for r in rows if r["impl"] == "rhmfast"
                    and r["output"] == "tokens" and r["device"] == device and r["call"] == tokens}
            if not mine:
                continue
            if device == "cpu":
                values = {k: r["speedup_vs_per_level"] for k, r in mine.items()}
                goal, unit, bound = "rhmfast >= 20x the per-level baseline", "x", 20.0
            else:
                values = {k: r["gb_per_s"] for k, r in mine.items()}
                goal, unit, bound = "rhmfast > 500 GB/s of uint8 tokens", " GB/s", 500.0
            worst = min(values, key=values.get)
            out.append(dict(device=device, goal=goal, unit=unit, tokens_per_call=tokens, worst_config=worst,
                            worst=values[worst], best=max(values.values()), met=values[worst] >= bound,
                            worst_fraction_of_bandwidth=mine[worst]["gb_per_s"] * 1e9 / bandwidths[device]))
    return out


def table(rows, bandwidth, label) -> str:
    lines = [f"| (v, m, s, L) | output | impl | tokens/call | samples/s | Mtokens/s | GB/s | x per-level | "
             f"% of {label} |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| ({r['v']}, {r['m']}, {r['s']}, {r['L']}) | {r['output']} | {r['impl']} | "
                     f"{r['tokens_per_call']:.3g} | {r['samples_per_s']:.3g} | {r['tokens_per_s'] / 1e6:.0f} | "
                     f"{r['gb_per_s']:.2f} | {r['speedup_vs_per_level']:.1f} | "
                     f"{100 * r['gb_per_s'] * 1e9 / bandwidth:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (a smoke run)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--devices", nargs="*", default=None, help="default: cpu, and cuda when available")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1 << 22, 1 << 25],
                        help="tokens per call, one or more (default 2^22 and 2^25): calls up to a few MiB reuse "
                             "memory the allocator freed, larger ones pay the page faults of fresh output")
    parser.add_argument("--batch", type=int, default=128, help="samples per call of the small-call table")
    args = parser.parse_args(argv)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    info = machine()
    info["backends"] = rhmfast.backends()
    info["tokens_per_call"] = args.tokens
    payload = {"machine": info, "results": {}}
    markdown = [f"# RHM generation throughput\n\n{info['date']}, torch {info['torch']}, {info['cpu']} "
                f"({info['cpu_flags']}; {info['torch_threads']} threads)"
                f"{', ' + info['gpu'] if 'gpu' in info else ''}; tokens per call: "
                f"{', '.join(str(t) for t in args.tokens)}. Medians of 7 calls; 'x per-level' compares with "
                "the per-level baseline at the same call size.\n"]
    for device in devices:
        bandwidth = write_bandwidth(device) if device == "cpu" else copy_bandwidth(device)
        label = "fill_ bandwidth" if device == "cpu" else "copy bandwidth"
        rows = run(device, args.quick, args.tokens)
        small = small_calls(device, args.batch, args.quick)
        payload["results"][device] = {"bandwidth_bytes_per_s": bandwidth, "bandwidth_kind": label, "rows": rows,
                                      "small_calls": small}
        text = table(rows, bandwidth, label)
        header = f"\n## {device}: {label} {bandwidth / 1e9:.1f} GB/s\n"
        small_text = (f"\n### {device}: small calls (one training batch; medians of {11 if args.quick else 101} calls)\n\n"
                      + small_table(small))
        print(header + "\n" + text + "\n" + small_text)
        markdown.append(header + "\n" + text + "\n" + small_text + "\n")
    goal_rows = goals([r for res in payload["results"].values() for r in res["rows"]], args.tokens,
                      {d: res["bandwidth_bytes_per_s"] for d, res in payload["results"].items()})
    payload["goals"] = goal_rows
    if goal_rows:
        markdown.append("\n## Goals on token output\n\n| device | goal | tokens/call | worst (v, m, s, L) | worst | "
                        "worst, % of bandwidth | best | met |\n|---|---|---:|---|---:|---:|---:|---|\n")
        for g in goal_rows:
            line = (f"| {g['device']} | {g['goal']} | {g['tokens_per_call']} | {g['worst_config']} | "
                    f"{g['worst']:.1f}{g['unit']} | {100 * g['worst_fraction_of_bandwidth']:.1f} | "
                    f"{g['best']:.1f}{g['unit']} | {'yes' if g['met'] else 'no'} |")
            print("goal:", line)
            markdown.append(line + "\n")
    name = "generate_" + "_".join(device_tag(d) for d in devices) + ("_quick" if args.quick else "")
    paths = write_results(name, payload, "".join(markdown), args.out)
    print("\nwrote", *paths)


if __name__ == "__main__":
    main()
