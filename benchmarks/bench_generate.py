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
from common import machine, median_time, write_results  # noqa: E402
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


def run(device: str, quick: bool, tokens: int) -> list[dict]:
    rows = []
    token_budget = min(tokens, 1 << 22) if quick else tokens
    for v, m, s, L in CONFIGS:
        grammar = rhmfast.RHM(v, m, s, L)
        grammar._baseline_rules = [r.to(device) for r in grammar.rules]
        d = grammar.input_dim
        n = max(256, token_budget // d)
        n_onehot = max(64, (1 << (24 if quick else 27)) // (4 * v * d))  # ~128 MiB of float32 output
        n_ref = max(64, n // 32)
        generator = torch.Generator(device=device).manual_seed(0)
        table = grammar.table(device)

        def kernel(count=n):
            return grammar.sample(count, seed=1, device=device)

        def kernel_onehot(count=n_onehot):
            x, _ = grammar.sample(count, seed=1, device=device)
            return rhmfast.one_hot(x, v)

        def ref(count=n_ref):
            return reference.rhm_sample(table, grammar.n_classes, count, 1, 0, "iid", torch.uint8, False)

        def baseline(count=n):
            return per_level_baseline(grammar, count, generator, device)

        def baseline_onehot(count=n_onehot):
            x, _ = per_level_baseline(grammar, count, generator, device)
            return F.one_hot(x.long(), v).float().permute(0, 2, 1)

        cases = [
            ("rhmfast", "tokens", kernel, n, d),
            ("per-level torch", "tokens", baseline, n, d),
            ("torch reference", "tokens", ref, n_ref, d),
            ("rhmfast", "one-hot f32", kernel_onehot, n_onehot, 4 * v * d),
            ("per-level torch", "one-hot f32", baseline_onehot, n_onehot, 4 * v * d),
        ]
        for impl, output, fn, count, bytes_per_sample in cases:
            seconds = median_time(fn, repeats=3 if quick else 7, device=device)
            rows.append(dict(device=device, v=v, m=m, s=s, L=L, impl=impl, output=output, n=count,
                             seconds=seconds, samples_per_s=count / seconds,
                             tokens_per_s=count * d / seconds, gb_per_s=count * bytes_per_sample / seconds / 1e9))
        for output in ("tokens", "one-hot f32"):
            base = next(r for r in rows if r["impl"] == "per-level torch" and r["output"] == output and r["v"] == v
                        and r["L"] == L and r["device"] == device and r["s"] == s)
            for r in rows:
                if r["output"] == output and r["v"] == v and r["L"] == L and r["s"] == s and r["device"] == device:
                    r["speedup_vs_per_level"] = r["samples_per_s"] / base["samples_per_s"]
    return rows


def table(rows, bandwidth, label) -> str:
    lines = [f"| (v, m, s, L) | output | impl | samples/s | Mtokens/s | GB/s | x per-level | % of {label} |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| ({r['v']}, {r['m']}, {r['s']}, {r['L']}) | {r['output']} | {r['impl']} | "
                     f"{r['samples_per_s']:.3g} | {r['tokens_per_s'] / 1e6:.0f} | {r['gb_per_s']:.2f} | "
                     f"{r['speedup_vs_per_level']:.1f} | {100 * r['gb_per_s'] * 1e9 / bandwidth:.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (a smoke run)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--devices", nargs="*", default=None, help="default: cpu, and cuda when available")
    parser.add_argument("--tokens", type=int, default=1 << 25,
                        help="tokens per call (default 2^25); small calls reuse freed memory, large ones pay "
                             "the page faults of fresh output")
    args = parser.parse_args()
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    info = machine()
    info["backends"] = rhmfast.backends()
    payload = {"machine": info, "results": {}}
    markdown = [f"# RHM generation throughput\n\n{info['date']}, torch {info['torch']}, {info['cpu']} "
                f"({info['torch_threads']} threads){', ' + info['gpu'] if 'gpu' in info else ''}; "
                f"{args.tokens} tokens per call.\n"]
    for device in devices:
        bandwidth = write_bandwidth(device) if device == "cpu" else copy_bandwidth(device)
        label = "fill_ bandwidth" if device == "cpu" else "copy bandwidth"
        rows = run(device, args.quick, args.tokens)
        payload["results"][device] = {"bandwidth_bytes_per_s": bandwidth, "bandwidth_kind": label, "rows": rows}
        text = table(rows, bandwidth, label)
        header = f"\n## {device}: {label} {bandwidth / 1e9:.1f} GB/s\n"
        print(header + "\n" + text)
        markdown.append(header + "\n" + text + "\n")
    info["tokens_per_call"] = args.tokens
    name = "generate_" + "_".join(devices) + ("_quick" if args.quick else "") + \
        ("" if args.tokens == 1 << 25 else f"_tokens{args.tokens}")
    paths = write_results(name, payload, "".join(markdown), args.out)
    print("\nwrote", *paths)


if __name__ == "__main__":
    main()
