"""Benchmark of the patchwise layers: patch_conv, token_patch_embed and patch_conv_stack against the
PyTorch ways of computing the same layers, forward and forward + backward.

Candidates are timed in interleaved rounds (every candidate once per round, median over rounds, each
round in another order), so neither a machine whose load changes during the run nor the candidate that
ran just before biases any candidate. Writes a JSON file with every measurement and a markdown
summary (one table per op, machine, torch version, date).

    python benchmarks/bench_patchconv.py            # full run (a few minutes on 2 CPU cores)
    python benchmarks/bench_patchconv.py --quick    # small batches, few rounds
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rhmfast  # noqa: E402
from common import device_tag, ieee_float32_on_gpu, machine  # noqa: E402
from rhmfast.nn import PatchConv1d, TokenPatchEmbedding  # noqa: E402
from rhmfast.ops.patch_conv_stack import patch_conv_stack  # noqa: E402

ADDMM = "_addmm_activation (nlc)"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# On a GPU one call of these layers takes microseconds, about what launching it costs the host: a
# sample there is this many calls back to back between two synchronisations, so that it measures the
# GPU's throughput rather than one launch's latency.
GPU_CALLS_PER_SAMPLE = 20
MAX_ROUNDS = 1000


def measure(candidates: dict, rounds: int, device, slow: frozenset = frozenset(), min_seconds: float = 0.0):
    """Median seconds per call of each candidate, and its number of samples. At least `rounds` rounds,
    more when calls are short, until each candidate has about `min_seconds` of samples (at most
    MAX_ROUNDS): a median of 15 one-millisecond samples moves by several percent from run to run, more
    than the margins it is meant to show. Slow candidates (seconds per call) skip the warm-up and run in
    the first two rounds only, one call a sample."""
    times = {name: [] for name in candidates}
    for name, fn in candidates.items():  # warm-up: allocator, MKL buffers, lazy init, compilation
        if name not in slow:
            fn()
            sync(device)
    names = list(candidates)
    r = 0
    while r < rounds:
        # Each round in its own order (seeded: runs repeat), so that no candidate keeps running right
        # after the same other one and finding the caches that one left.
        for name in random.Random(r).sample(names, len(names)):
            fn = candidates[name]
            if name in slow and r >= 2:
                continue
            calls = GPU_CALLS_PER_SAMPLE if device.type == "cuda" and name not in slow else 1
            sync(device)
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - start) / calls)
        if r == 0:  # the slowest repeated candidate sets how many rounds fit the time asked for
            slowest = max(times[n][0] * (GPU_CALLS_PER_SAMPLE if device.type == "cuda" else 1)
                          for n in names if n not in slow)
            rounds = max(rounds, min(MAX_ROUNDS, math.ceil(min_seconds / slowest)))
        r += 1
    return {name: statistics.median(t) for name, t in times.items()}, {name: len(t) for name, t in times.items()}


def train_step(forward):
    """forward() + backward with a dense random output gradient (what a layer inside a network gets;
    the expanded gradient of .sum() would favour kernels that can read stride-0 gradients)."""
    grads = {}

    def step():
        out = forward()
        if out.shape not in grads:
            grads[out.shape] = torch.randn(out.shape, device=out.device, dtype=out.dtype)
        out.backward(grads[out.shape])
    return step


def no_grad(forward):
    def run():
        with torch.no_grad():
            forward()
    return run


def on_gemm(gemm: str, forward):
    """forward with rhmfast's float32 CPU GEMMs on `gemm` (the choice is global: every rhmfast candidate
    selects its own before it runs, whichever candidate ran before it)."""
    def run():
        rhmfast.set_cpu_gemm(gemm)
        return forward()
    return run


def gemm_variants(args, device, name: str, forward) -> dict:
    """rhmfast's candidate under the GEMM library chosen automatically and, on a CPU where the other one
    is usable too, under that one."""
    variants = {name: on_gemm("auto", forward)}
    if device.type == "cpu" and args.other_gemm:
        variants[f"{name}, {args.other_gemm} GEMM"] = on_gemm(args.other_gemm, forward)
    return variants


def other_usable_gemm():
    """The GEMM library that "auto" does not pick, if rhmfast can use it here (else None)."""
    auto = rhmfast.backends()["cpu_gemm"]
    if auto is None:
        return None
    other = {"blas": "onednn", "onednn": "blas"}[auto]
    rhmfast.set_cpu_gemm(other)
    usable = rhmfast.backends()["cpu_gemm"] == other
    rhmfast.set_cpu_gemm("auto")
    return other if usable else None


UNFOLD = "unfold+matmul (ncl)"


def compile_best(eager_forwards: dict, medians: dict, exclude: frozenset = frozenset()):
    """torch.compile of the fastest eager formulation not in `exclude`. Dynamo's caches are cleared
    first: every config compiles the same lambdas (one code object each), and past 8 recompilations of
    one code object dynamo would quietly run it eagerly under the "torch.compile" name."""
    name = min((n for n in eager_forwards if n not in exclude), key=lambda n: medians[n])
    torch._dynamo.reset()
    return f"torch.compile({name})", torch.compile(eager_forwards[name])


def rows_for(op, config, mode, measured, work, unit, reference_name):
    """Table rows from measure()'s result: time, rate (work / time), speedup of `reference_name` over
    each candidate, and its number of samples."""
    medians, samples = measured
    rows = []
    for name, t in medians.items():
        rows.append(dict(op=op, config=config, mode=mode, candidate=name, median_ms=t * 1e3, samples=samples[name],
                         rate=work / t / 1e9, unit=unit, rhmfast_speedup=t / medians[reference_name]))
    return rows


def bench_patch_conv(args, device):
    rows = []
    for width in args.widths:
        for s in (2, 3):
            batch, t_out = args.batch, 16
            torch.manual_seed(0)
            conv = nn.Conv1d(width, width, s, stride=s, device=device, dtype=args.dtype)
            layer_nlc = PatchConv1d.from_conv1d(conv, activation="relu", layout="nlc")
            layer_ncl = PatchConv1d.from_conv1d(conv, activation="relu")
            w2 = conv.weight.detach().permute(0, 2, 1).reshape(width, s * width).contiguous().requires_grad_()
            x_ncl = torch.randn(batch, width, t_out * s, device=device, dtype=args.dtype)
            x_nlc = x_ncl.transpose(1, 2).contiguous()
            bias = conv.bias

            def unfold_matmul(x=x_ncl):
                patches = x.unfold(2, s, s).permute(0, 2, 3, 1).reshape(batch, t_out, s * width)
                return torch.relu(patches @ w2.t() + bias)

            eager = {
                "nn.Conv1d (ncl)": lambda: torch.relu(conv(x_ncl)),
                UNFOLD: unfold_matmul,
                "nn.Linear on view (nlc)": lambda: torch.relu(F.linear(x_nlc.view(batch, t_out, s * width), w2, bias)),
            }
            if device.type == "cuda":  # cuBLASLt's bias + ReLU epilogue; it has no backward (forward rows only)
                eager[ADDMM] = lambda: torch._addmm_activation(bias, x_nlc.view(batch * t_out, s * width), w2.t())
            ours = {**gemm_variants(args, device, "rhmfast PatchConv1d (nlc)", lambda: layer_nlc(x_nlc)),
                    "rhmfast PatchConv1d (ncl)": on_gemm("auto", lambda: layer_ncl(x_ncl))}
            flops = 2 * batch * t_out * s * width * width
            config = f"C={width} s={s} B={batch} T={t_out * s}"
            for mode in ("fwd", "fwd+bwd"):
                x_nlc.requires_grad_(mode == "fwd+bwd")
                x_ncl.requires_grad_(mode == "fwd+bwd")
                wrap = no_grad if mode == "fwd" else train_step
                formulations = {n: f for n, f in eager.items() if mode == "fwd" or n != ADDMM}
                pilot, _ = measure({n: wrap(f) for n, f in formulations.items()}, 2, device)
                # torch 2.13's inductor corrupts the heap in the compiled CPU backward of Tensor.unfold
                # (glibc aborts the process, every time; reproducer in benchmarks/README.md), so on the
                # CPU the forward + backward compile candidate comes from the other formulations.
                broken = frozenset({UNFOLD}) if device.type == "cpu" and mode == "fwd+bwd" else frozenset()
                compiled_name, compiled = compile_best(formulations, pilot, exclude=broken)
                cands = {n: wrap(f) for n, f in {**ours, **formulations, compiled_name: compiled}.items()}
                measured = measure(cands, args.rounds, device, min_seconds=args.min_seconds)
                work = flops * (1 if mode == "fwd" else 3)
                rows += rows_for("patch_conv", config, mode, measured, work, "GFLOP/s", "rhmfast PatchConv1d (nlc)")
                log(rows[-len(measured[0]):])
    return rows


def bench_token(args, device):
    rows = []
    vocab = 32
    for width in args.widths:
        for s in (2, 3):
            batch, t_out = args.batch, 16
            torch.manual_seed(0)
            conv = nn.Conv1d(vocab, width, s, stride=s, device=device, dtype=args.dtype)
            emb = TokenPatchEmbedding.from_patch_conv(conv, activation="relu", layout="nlc")
            bag = nn.EmbeddingBag(s * vocab, width, mode="sum", device=device, dtype=args.dtype)
            with torch.no_grad():
                bag.weight.copy_(emb.weight.reshape(s * vocab, width))
            tokens = torch.randint(0, vocab, (batch, t_out * s), device=device)
            offsets = torch.arange(s, device=device) * vocab
            cands = {
                "rhmfast TokenPatchEmbedding": lambda: emb(tokens),
                "nn.Conv1d on one-hot": lambda: torch.relu(conv(F.one_hot(tokens, vocab).to(args.dtype).transpose(1, 2))),
                "nn.EmbeddingBag (sum)": lambda: torch.relu(
                    bag((tokens.view(batch * t_out, s) + offsets)) + conv.bias).view(batch, t_out, width),
            }
            elem = torch.tensor([], dtype=args.dtype).element_size()
            moved = batch * t_out * width * elem * (s + 1)  # s gathered rows read + 1 output row written
            config = f"v={vocab} C={width} s={s} B={batch} T={t_out * s}"
            for mode in ("fwd", "fwd+bwd"):
                wrap = no_grad if mode == "fwd" else train_step
                measured = measure({n: wrap(f) for n, f in cands.items()}, args.rounds, device,
                                   min_seconds=args.min_seconds)
                work = moved * (1 if mode == "fwd" else 2)
                rows += rows_for("token_patch_embed", config, mode, measured, work, "GB/s", "rhmfast TokenPatchEmbedding")
                log(rows[-len(measured[0]):])
    return rows


def bench_trunk(args, device):
    rows = []
    vocab, s, layers = 32, 2, 6
    for width in args.trunk_widths:
        batch = args.trunk_batch
        torch.manual_seed(0)
        tokens = torch.randint(0, vocab, (batch, s ** layers), device=device)
        fan_in = [s * vocab] + [s * width] * (layers - 1)
        # The reference hCNN: N(0, 1) weights [C_out, C_in, 1, s], each layer divided by sqrt(C_in*s).
        filters = [torch.randn(width, c // s, 1, s, device=device, dtype=args.dtype, requires_grad=True)
                   for c in fan_in]
        table = filters[0].detach().squeeze(2).permute(2, 1, 0).contiguous().requires_grad_()
        weights = [f.detach().squeeze(2).permute(0, 2, 1).reshape(width, -1).contiguous().requires_grad_()
                   for f in filters[1:]]
        convs = nn.Sequential(*[m for l in range(layers) for m in (
            nn.Conv1d(fan_in[l] // s, width, s, stride=s, bias=False, device=device, dtype=args.dtype), nn.ReLU())])

        def one_hot():
            return F.one_hot(tokens, vocab).to(args.dtype).transpose(1, 2)

        def broadcast_hcnn():
            x = one_hot()
            for f in filters:
                b, c, t = x.shape
                patches = x.reshape(b, 1, c, t // s, s)            # [B, 1, C_in, T/s, s]
                x = torch.relu((patches * f.unsqueeze(0)).sum(dim=(2, 4)) / math.sqrt(c * s))  # 5-D product
            return x

        def linear_layers():  # best per-layer PyTorch formulation: channels-last Linear on views
            x = F.one_hot(tokens, vocab).to(args.dtype)  # [B, T, v]
            for w in [table.detach().reshape(s * vocab, width).t()] + weights:
                b, t, c = x.shape
                x = torch.relu(F.linear(x.reshape(b, t // s, s * c), w) / math.sqrt(s * c))
            return x

        cands = {
            **gemm_variants(args, device, "rhmfast patch_conv_stack",
                            lambda: patch_conv_stack(tokens, table, weights, patch_size=s, scales="hcnn")),
            "nn.Conv1d stack on one-hot": lambda: convs(one_hot()),
            "nn.Linear per layer on one-hot (nlc)": linear_layers,
            "reference hCNN (5-D broadcast)": broadcast_hcnn,
        }
        flops = sum(2 * batch * (s ** layers // s ** (l + 1)) * fan_in[l] * width for l in range(layers))
        config = f"v={vocab} s={s} L={layers} C={width} B={batch}"
        for mode in ("fwd", "fwd+bwd"):
            wrap = no_grad if mode == "fwd" else train_step
            slow = frozenset({"reference hCNN (5-D broadcast)"})
            measured = measure({n: wrap(f) for n, f in cands.items()}, args.rounds, device, slow, args.min_seconds)
            rows += rows_for("patch_conv_stack", config, mode, measured, flops * (1 if mode == "fwd" else 3),
                             "GFLOP/s", "rhmfast patch_conv_stack")
            log(rows[-len(measured[0]):])
    return rows


def log(rows):
    for r in rows:
        print(f"  {r['op']:18s} {r['config']:28s} {r['mode']:8s} {r['candidate']:38s} {r['median_ms']:10.3f} ms "
              f"{r['rate']:8.2f} {r['unit']:8s} x{r['rhmfast_speedup']:.2f}", flush=True)


def goals(rows, device):
    """The issue's speed goals for this run's device, evaluated on this run's medians."""
    return gpu_goals(rows) if device.type == "cuda" else cpu_goals(rows)


def median_ms(rows, op, config_part, mode, cand):
    return next((r["median_ms"] for r in rows if r["op"] == op and config_part in r["config"] and r["mode"] == mode
                 and r["candidate"] == cand), None)


def cpu_goals(rows):
    out = []
    trunk = median_ms(rows, "patch_conv_stack", "C=256", "fwd+bwd", "rhmfast patch_conv_stack")
    conv = median_ms(rows, "patch_conv_stack", "C=256", "fwd+bwd", "nn.Conv1d stack on one-hot")
    if trunk and conv:
        out.append(dict(goal="trunk fwd+bwd >= 1.5x nn.Conv1d stack on one-hot (v=32 s=2 L=6 C=256)",
                        value=conv / trunk, met=conv / trunk >= 1.5))
    token_ratios = [r["rhmfast_speedup"] for r in rows if r["op"] == "token_patch_embed" and r["mode"] == "fwd+bwd"
                    and r["candidate"] == "nn.Conv1d on one-hot"]
    if token_ratios:
        out.append(dict(goal="token layer fwd+bwd >= 10x nn.Conv1d on one-hot (worst config)",
                        value=min(token_ratios), met=min(token_ratios) >= 10))
    worst = None
    for r in rows:
        if r["op"] != "patch_conv" or r["candidate"].startswith("rhmfast"):
            continue
        if worst is None or r["rhmfast_speedup"] < worst["rhmfast_speedup"]:
            worst = r
    if worst:
        out.append(dict(goal="patch_conv (nlc) never slower than the best PyTorch formulation (worst case: "
                        f"{worst['candidate']}, {worst['config']}, {worst['mode']})",
                        value=worst["rhmfast_speedup"], met=worst["rhmfast_speedup"] >= 1.0))
    return out


def gpu_goals(rows):
    out = []
    addmm = [r for r in rows if r["op"] == "patch_conv" and r["candidate"] == ADDMM]
    if addmm:
        worst = min(addmm, key=lambda r: r["rhmfast_speedup"])
        out.append(dict(goal="patch_conv (nlc) forward at least as fast as torch._addmm_activation (cuBLASLt) on "
                        f"the channels-last view (worst case: {worst['config']})",
                        value=worst["rhmfast_speedup"], met=worst["rhmfast_speedup"] >= 1.0))
    per_layer = ("nn.Conv1d stack on one-hot", "nn.Linear per layer on one-hot (nlc)")
    for mode in ("fwd", "fwd+bwd"):
        ratios = {}
        for width in (64, 128):
            config = f"C={width} "
            trunk = median_ms(rows, "patch_conv_stack", config, mode, "rhmfast patch_conv_stack")
            best = [t for t in (median_ms(rows, "patch_conv_stack", config, mode, c) for c in per_layer) if t]
            if trunk and best:
                ratios[width] = min(best) / trunk
        if ratios:
            width = min(ratios, key=ratios.get)
            out.append(dict(goal=f"trunk {mode} >= 2x the best per-layer PyTorch formulation, widths <= 128 "
                            f"(worst: C={width})", value=ratios[width], met=ratios[width] >= 2.0))
    return out


def rounds_text(meta):
    if "min_seconds" in meta:
        return (f"rounds: at least {meta['rounds']}, more for short calls until each candidate has "
                f"{meta['min_seconds']:g} s of samples (column 'samples')")
    return f"rounds {meta['rounds']} (token layer: {meta.get('token_rounds', meta['rounds'])})"  # earlier runs


def markdown(meta, rows, goal_rows):
    lines = [f"# Patchwise layers benchmark ({meta['device']})", "",
             f"Machine: {meta['machine']}; torch {meta['torch']}; {meta['threads']} threads; dtype {meta['dtype']}"
             f"{'; float32 GEMMs: ' + meta['cpu_gemm'] if meta.get('cpu_gemm') and 'CPU' in meta['device'] else ''}; "
             f"{meta['date']}; {rounds_text(meta)}"
             f"{' (quick)' if meta['quick'] else ''}"
             f"{'; TF32 ' + ('on' if meta['cudnn_allow_tf32'] or meta['cuda_matmul_allow_tf32'] else 'off') if 'cudnn_allow_tf32' in meta else ''}"
             f"{f'; {GPU_CALLS_PER_SAMPLE} calls a sample' if 'CPU' not in meta['device'] else ''}. Median of interleaved "
             "rounds, each round in another order; speedup = candidate time / rhmfast time (>1: rhmfast faster).", ""]
    notes = {
        "patch_conv": "GFLOP/s: 2·rows·s·C_in·C_out per forward, 3x that for forward + backward (grad of x and W).",
        "token_patch_embed": "GB/s: bytes of the s gathered table rows read plus the output written, per output "
                             "position (2x for forward + backward). The one-hot Conv1d time includes building the "
                             "one-hot input, as users pay it.",
        "patch_conv_stack": "GFLOP/s are nominal: the per-layer FLOP count of the plain formulation for every "
                            "candidate (rhmfast computes layer 2 on distinct patches and does fewer FLOPs). "
                            "The 5-D broadcast formulation runs twice, without warm-up.",
    }
    for op in ("patch_conv", "token_patch_embed", "patch_conv_stack"):
        op_rows = [r for r in rows if r["op"] == op]
        if not op_rows:
            continue
        lines += [f"## {op}", "", notes[op], "",
                  "| config | mode | candidate | median ms | rate | rhmfast speedup | samples |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for r in op_rows:
            lines.append(f"| {r['config']} | {r['mode']} | {r['candidate']} | {r['median_ms']:.3f} | "
                         f"{r['rate']:.1f} {r['unit']} | {r['rhmfast_speedup']:.2f} | {r.get('samples', '')} |")
        lines.append("")
    lines += ["## Goals", "", "| goal | measured | met |", "|---|---:|---|"]
    lines += [f"| {g['goal']} | {g['value']:.3f}x | {'yes' if g['met'] else 'NO'} |" for g in goal_rows]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batches and few rounds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", default="patch_conv,token_patch_embed,patch_conv_stack")
    parser.add_argument("--rounds", type=int, default=None, help="fewest rounds (default 15, quick 3)")
    parser.add_argument("--min-seconds", type=float, default=None,
                        help="more rounds for short calls, until each candidate has this many seconds of samples "
                             "(default 1 on a CPU, 0.25 on a GPU, 0.1 with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/patchconv_<device>.json)")
    parser.add_argument("--markdown-from", default=None, metavar="JSON",
                        help="only rewrite the markdown summary of an earlier run's JSON")
    args = parser.parse_args(argv)
    if args.markdown_from:
        with open(args.markdown_from) as f:
            run = json.load(f)
        with open(os.path.splitext(args.markdown_from)[0] + ".md", "w") as f:
            f.write(markdown(run["meta"], run["results"], run["goals"]))
        return
    device = torch.device(args.device)
    if device.type == "cuda":
        ieee_float32_on_gpu()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.dtype = torch.float32
    args.widths = (64, 128, 256, 512)
    args.batch = 128 if args.quick else 512
    args.trunk_batch = 64 if args.quick else 256
    args.trunk_widths = (64, 128, 256)
    args.rounds = args.rounds or (3 if args.quick else 15)  # fewer let one slow stretch of the machine set a median
    if args.min_seconds is None:  # a GPU's calls are steadier, and its whole check has a time budget
        args.min_seconds = 0.1 if args.quick else 0.25 if device.type == "cuda" else 1.0
    print(rhmfast.backends(), flush=True)
    gemm = rhmfast.backends()["cpu_gemm"]
    args.other_gemm = other_usable_gemm() if device.type == "cpu" else None
    info = machine()
    meta = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else f"CPU: {info['cpu']}",
                machine=f"{platform.machine()} {info['cpu']} ({info['cpu_flags']}), {info['cores']} cores",
                torch=torch.__version__,
                threads=torch.get_num_threads(), cpu_gemm=gemm, dtype=str(args.dtype), quick=args.quick,
                rounds=args.rounds, min_seconds=args.min_seconds,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                python=sys.version.split()[0], backends=rhmfast.backends(),
                **({k: info[k] for k in ("cudnn_allow_tf32", "cuda_matmul_allow_tf32")} if "gpu" in info else {}))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"patchconv_{device_tag(device.type)}{'_quick' if args.quick else ''}.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    rows = []
    ops = args.ops.split(",")
    for op, bench in (("patch_conv", bench_patch_conv), ("token_patch_embed", bench_token),
                      ("patch_conv_stack", bench_trunk)):
        if op not in ops:
            continue
        rows += bench(args, device)
        # Written after every op, so a run stopped part-way keeps the tables it finished.
        goal_rows = goals(rows, device)
        with open(out, "w") as f:
            json.dump(dict(meta=meta, results=rows, goals=goal_rows), f, indent=1)
        with open(os.path.splitext(out)[0] + ".md", "w") as f:
            f.write(markdown(meta, rows, goal_rows))
        print(f"wrote {out} and {os.path.splitext(out)[0]}.md", flush=True)
    for g in goals(rows, device):
        print(f"goal: {g['goal']}: {g['value']:.3f}x -> {'met' if g['met'] else 'NOT met'}")

if __name__ == "__main__":
    main()
