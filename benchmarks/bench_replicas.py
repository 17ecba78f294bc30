"""Replica-batched training against solo runs: the cost of a training step per replica, where it goes, and
the wall time of sweeps packed and unpacked.

steps: ``train_sgd_replicas`` with K replicas against ``train_sgd`` of one model (the whole trainer: data
gathering, the fused trunk, loss, backward, the optimizer update, per-epoch bookkeeping), one thread, batch
128, for the demo's hCNN (v = 8, L = 4, width 64) and a wide one (v = 32, L = 3, width 256); time per step per
replica, medians over --repeats. The profile splits one packed step at K = 16 into its parts.
sweep: ``rhmfast sweep`` of a grid with --pack 1 and with the default pack, 2 workers, one run each, side by
side: the demo's hCNN grid, and a width-256 grid on v = n_c = 32.
gpu (``--device cuda``): samples per second summed over K replicas against one solo run, K up to the largest
that fits.

    python benchmarks/bench_replicas.py [--parts steps,profile,sweep] [--device cpu] [--out benchmarks/results]
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
from common import device_tag, machine, write_results  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rhmfast.data.grammar import RHM  # noqa: E402
from rhmfast.models import HierarchicalCNN  # noqa: E402
from rhmfast.train import train_sgd, train_sgd_replicas  # noqa: E402

SHAPES = {"width 64 (v=8, L=4)": dict(v=8, m=4, L=4, width=64),
          "width 256 (v=32, L=3)": dict(v=32, m=4, L=3, width=256)}
BATCH = 128


_GRAMMARS = {}


def _grammar(shape):
    key = (shape["v"], shape["m"], shape["L"])
    if key not in _GRAMMARS:  # built once: its construction is not part of a step
        _GRAMMARS[key] = RHM(v=shape["v"], n_classes=shape["v"], m=shape["m"], s=2, L=shape["L"], seed=0)
    return _GRAMMARS[key]


def _arch(shape):
    return dict(v=shape["v"], width=shape["width"], s=2, L=shape["L"], n_classes=shape["v"], norm="mf")


def step_time(shape, K: int, steps: int, device: str) -> float:
    """Seconds per training step per replica of K packed runs (K = 0: train_sgd of one model), 20 steps an
    epoch, evaluated once at the end on 256 test samples."""
    grammar = _grammar(shape)
    epochs = max(1, steps // 20)
    common = dict(n_test=256, lr=0.1, batch_size=BATCH, max_epochs=epochs, loss_threshold=0.0, eval_every=epochs,
                  progress=False)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if K == 0:
        model = HierarchicalCNN(**_arch(shape), seed=0).to(device)
        sync()
        started = time.perf_counter()
        train_sgd(model, grammar, 20 * BATCH, seed_data=0, seed_order=0, **common)
        sync()
        return (time.perf_counter() - started) / (epochs * 20)
    replicas = HierarchicalCNN.replicas(K, list(range(K)), **_arch(shape)).to(device)
    sync()
    started = time.perf_counter()
    train_sgd_replicas(replicas, grammar, 20 * BATCH, seed_data=list(range(K)), seed_order=list(range(K)), **common)
    sync()
    return (time.perf_counter() - started) / (epochs * 20 * K)


def steps_part(args, device: str) -> list[dict]:
    rows = []
    for name, shape in SHAPES.items():
        steps = args.steps if shape["width"] == 64 else max(20, args.steps // 5)
        step_time(shape, 0, 20, device)  # warm-up: allocator, first calls
        solo = statistics.median(step_time(shape, 0, steps, device) for _ in range(args.repeats))
        rows.append(dict(shape=name, K=0, step_ms=1e3 * solo, speedup=1.0))
        for K in [int(k) for k in args.ks.split(",")]:
            per = statistics.median(step_time(shape, K, steps, device) for _ in range(args.repeats))
            rows.append(dict(shape=name, K=K, step_ms=1e3 * per, speedup=solo / per))
            print(f"{name} K={K}: {1e3 * per:.3f} ms per replica step, {solo / per:.2f}x the solo step "
                  f"({1e3 * solo:.3f} ms)")
    return rows


def profile_part(args, device: str, K: int = 16) -> list[dict]:
    """One packed step at K of the width-64 shape, split into its parts (medians of timed repetitions)."""
    from rhmfast.train.replicas import _sgd_update

    shape = SHAPES["width 64 (v=8, L=4)"]
    replicas = HierarchicalCNN.replicas(K, list(range(K)), **_arch(shape)).to(device)
    grammar = _grammar(shape)
    data = [grammar.split(20 * BATCH, 256, seed=k, device=device)[0] for k in range(K)]
    params = list(replicas.parameters())
    buffers = [None] * len(params)
    gen = torch.Generator().manual_seed(0)
    idx = [torch.randperm(20 * BATCH, generator=gen)[:BATCH] for _ in range(K)]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    parts = dict(gather=[], forward=[], loss=[], backward=[], update=[])
    for repetition in range(args.steps + 20):
        t0 = time.perf_counter()
        tokens = torch.stack([x[i] for (x, _), i in zip(data, idx)])
        targets = torch.stack([y[i] for (_, y), i in zip(data, idx)])
        sync()
        t1 = time.perf_counter()
        logits = replicas(tokens)
        sync()
        t2 = time.perf_counter()
        log_probs = F.log_softmax(logits, -1)
        loss = F.nll_loss(log_probs.view(-1, logits.shape[-1]), targets.view(-1), reduction="none").view(K, -1)
        total = loss.mean(1).sum()
        sync()
        t3 = time.perf_counter()
        total.backward()
        sync()
        t4 = time.perf_counter()
        _sgd_update(params, buffers, [0.01 * shape["width"]] * K, 0.9, 0.0)
        with torch.no_grad():
            torch.stack([F.nll_loss(log_probs[k], targets[k]) for k in range(K)])
        sync()
        t5 = time.perf_counter()
        if repetition >= 20:
            for name, (a, b) in zip(parts, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5))):
                parts[name].append(b - a)
    rows = [dict(part=name, ms_per_replica=1e3 * statistics.median(times) / K) for name, times in parts.items()]
    rows.append(dict(part="total", ms_per_replica=sum(r["ms_per_replica"] for r in rows)))
    return rows


def sweep_wall(configs, pack, workers: int) -> float:
    from rhmfast.studies.sweep import run_sweep

    folder = tempfile.mkdtemp(prefix="rhmfast-bench-replicas-")
    started = time.perf_counter()
    outcome = run_sweep(configs, folder, progress=False, workers=workers, pack=pack)
    wall = time.perf_counter() - started
    shutil.rmtree(folder)
    if outcome["failures"]:
        raise RuntimeError(f"runs failed: {outcome['failures'][:1]}")
    return wall


def sweep_part(args) -> list[dict]:
    from rhmfast.studies.grid import expand

    grids = {
        "demo hCNN grid (v=8; (m,L) = (2,4), (3,3), (4,3); P/(n_c m^L) = 0.5..6; 3 seeds; width 64)":
            dict(v=8, settings=[[2, 4], [3, 3], [4, 3]], P_scaled=[0.5, 1, 1.5, 2, 3, 4, 6], seeds=[0, 1, 2],
                 width=64, norm="mf", n_test=2048, max_steps=3000, rules="pcsl", seed_rules=0),
        "width-256 grid (v=n_c=32; (m,L) = (2,3), (8,2); P/(n_c m^L) = 0.5..4; 2 seeds; max 1000 steps)":
            dict(v=32, settings=[[2, 3], [8, 2]], P_scaled=[0.5, 1, 2, 4], seeds=[0, 1], width=256, norm="mf",
                 n_test=2048, max_steps=1000, rules="pcsl", seed_rules=0),
    }
    rows = []
    for name, grid in grids.items():
        configs = expand(dict(grid, model="hcnn"))
        alone = sweep_wall(configs, 1, args.workers)
        packed = sweep_wall(configs, None, args.workers)
        rows.append(dict(grid=name, runs=len(configs), unpacked_s=alone, packed_s=packed, speedup=alone / packed))
        print(f"{name}: {len(configs)} runs, unpacked {alone:.1f} s, packed {packed:.1f} s, {alone / packed:.2f}x")
    return rows


def gpu_part(args) -> list[dict]:
    """Samples per second summed over K replicas against one solo run (width 64 shape), K doubling until
    memory runs out or K = 4096."""
    shape = SHAPES["width 64 (v=8, L=4)"]
    solo = step_time(shape, 0, args.steps, "cuda")
    rows = [dict(K=1, solo=True, samples_per_s=BATCH / solo, speedup=1.0)]
    K = 1
    while K <= 4096:
        try:
            per = step_time(shape, K, args.steps, "cuda")
        except torch.cuda.OutOfMemoryError:
            break
        rows.append(dict(K=K, solo=False, samples_per_s=BATCH / per, speedup=solo / per))
        print(f"cuda K={K}: {BATCH / per:.0f} samples/s summed, {solo / per:.1f}x one solo run")
        K *= 2
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="steps,profile,sweep")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--ks", default="1,2,4,8,16,32,64")
    parser.add_argument("--steps", type=int, default=200, help="training steps per timing (width 64)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    parts = args.parts.split(",")
    payload = dict(machine=machine(), args=vars(args))
    info = payload["machine"]
    lines = ["# Replica-batched training (train_sgd_replicas, sweep packing)", "",
             f"{info['cpu']} ({info['cpu_flags']}), {info['cores']} cores, one torch thread per process, torch "
             f"{info['torch']}, {info['date']}" + (f", {info['gpu']}" if args.device == "cuda" else "") + ".", ""]
    if "steps" in parts and args.device == "cpu":
        payload["steps"] = steps_part(args, "cpu")
        lines += ["## Cost of a training step per replica", "",
                  f"The whole trainer (data, fused trunk, loss, backward, optimizer, epoch bookkeeping), batch {BATCH}, "
                  f"medians of {args.repeats}; K = solo: train_sgd of one model.", "",
                  "| model | K | ms per replica step | vs solo |", "|---|---|---|---|"]
        for r in payload["steps"]:
            lines.append(f"| {r['shape']} | {r['K'] or 'solo'} | {r['step_ms']:.3f} | {r['speedup']:.2f}x |")
        lines.append("")
    if "profile" in parts and args.device == "cpu":
        payload["profile"] = profile_part(args, "cpu")
        lines += ["## Where a packed step's time goes (width 64, K = 16, per replica)", "",
                  "| part | ms per replica |", "|---|---|"]
        lines += [f"| {r['part']} | {r['ms_per_replica']:.3f} |" for r in payload["profile"]]
        lines.append("")
    if "sweep" in parts and args.device == "cpu":
        payload["sweep"] = sweep_part(args)
        lines += ["## Sweep wall time, packed against unpacked", "",
                  f"rhmfast sweep into a fresh store, {args.workers} workers, --pack 1 against the default pack; "
                  "one run of each, side by side.", "",
                  "| grid | runs | unpacked (s) | packed (s) | speed-up |", "|---|---|---|---|---|"]
        for r in payload["sweep"]:
            lines.append(f"| {r['grid']} | {r['runs']} | {r['unpacked_s']:.0f} | {r['packed_s']:.0f} | "
                         f"{r['speedup']:.2f}x |")
        lines.append("")
    if args.device == "cuda":
        payload["gpu"] = gpu_part(args)
        lines += ["## GPU: samples per second summed over replicas (width 64, v = 8, L = 4, batch 128)", "",
                  "| K | samples/s | vs one solo run |", "|---|---|---|"]
        lines += [f"| {'solo' if r['solo'] else r['K']} | {r['samples_per_s']:.0f} | {r['speedup']:.1f}x |"
                  for r in payload["gpu"]]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    print("wrote", *write_results(f"replicas_{device_tag(args.device)}", payload, markdown, args.out))


if __name__ == "__main__":
    main()
