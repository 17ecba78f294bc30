"""Training throughput of the hCNN (samples/s, data generation included): rhmfast against the 2024
library's formulation, rebuilt here from its description (one-hot float inputs from a per-level generator,
F.conv1d layers divided by sqrt(C_in*s), ReLU, mean, readout), at the reference sizes.

One training step = draw a fresh batch, forward, cross-entropy, backward, SGD (lr 0.1, momentum 0.9).
Candidates run in interleaved rounds (each runs `steps` steps per round; median over rounds; which one
goes first alternates), so neither a load change on the machine nor the order biases either. Wall time
and process CPU time are both recorded.

    python benchmarks/bench_train.py                  # full run (a few minutes on 2 CPU cores)
    python benchmarks/bench_train.py --quick          # fewer rounds and steps
    python benchmarks/bench_train.py --device cuda    # data, model and steps on the GPU

Goals: >= 2x the library formulation at L=3 and >= 3x at L=6 on the CPU, >= 5x at both on a GPU.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_tag, interleaved_steps, machine, set_up_device, step_timings, write_results  # noqa: E402

import rhmfast  # noqa: E402
from rhmfast.models import HierarchicalCNN  # noqa: E402

CONFIGS = [dict(v=32, m=8, s=2, L=3), dict(v=16, m=4, s=2, L=6)]


class LibraryData:
    """The library's data path: label randint, then per level a randint of rule choices and a fancy index
    into the rule table; the leaves become a one-hot float tensor [B, v, s^L]."""

    def __init__(self, grammar, batch: int, seed: int, device: str):
        self.table = grammar.table(device).long()  # [L, R, m, s], rows indexed by symbol
        self.g, self.batch, self.device = grammar, batch, device
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def __call__(self):
        g = self.g
        labels = torch.randint(g.n_classes, (self.batch,), generator=self.gen, device=self.device)
        symbols = labels.unsqueeze(1)
        for level in range(g.L):
            choice = torch.randint(g.m, symbols.shape, generator=self.gen, device=self.device)
            symbols = self.table[level][symbols, choice].flatten(1)
        return F.one_hot(symbols, g.v).permute(0, 2, 1).float(), labels


class LibraryHCNN(nn.Module):
    """The library's hCNN: weights N(0,1), F.conv1d / sqrt(C_in*s), ReLU, mean over positions, beta / sqrt(H)."""

    def __init__(self, v, width, s, L, n_classes):
        super().__init__()
        self.s = s
        self.convs = nn.ParameterList([nn.Parameter(torch.randn(width, v if l == 0 else width, s)) for l in range(L)])
        self.beta = nn.Parameter(torch.randn(width, n_classes))

    def forward(self, x):
        for w in self.convs:
            x = torch.relu(F.conv1d(x, w, stride=self.s) / math.sqrt(w.shape[1] * self.s))
        return x.mean(-1) @ self.beta / math.sqrt(self.beta.shape[0])


def make_step(model, next_batch):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step():
        x, y = next_batch()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def rhmfast_batches(grammar, batch, device):
    position = [0]

    def next_batch():
        x, y = grammar.sample(batch, seed=1, start=position[0], device=device)
        position[0] += batch
        return x, y
    return next_batch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 10 steps instead of 9 of 30")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both candidates (default: torch's own choice)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    rounds, steps = (3, 10) if args.quick else (9, 30)
    device = set_up_device(parser, args)
    rows = []
    for cfg in CONFIGS:
        grammar = rhmfast.RHM(cfg["v"], cfg["m"], cfg["s"], cfg["L"], seed=0)
        torch.manual_seed(0)
        ours = HierarchicalCNN(cfg["v"], args.width, cfg["s"], cfg["L"], grammar.n_classes, seed=0).to(device)
        library = LibraryHCNN(cfg["v"], args.width, cfg["s"], cfg["L"], grammar.n_classes).to(device)
        candidates = {"library formulation": make_step(library, LibraryData(grammar, args.batch, 1, device)),
                      "rhmfast": make_step(ours, rhmfast_batches(grammar, args.batch, device))}
        result = interleaved_steps(candidates, rounds, steps, device)
        lib, fast = result["library formulation"], result["rhmfast"]
        row = dict(config=f"v={cfg['v']} m={cfg['m']} s={cfg['s']} L={cfg['L']}", device=device,
                   width=args.width, batch=args.batch,
                   library_samples_per_s=args.batch / lib["wall_s"], rhmfast_samples_per_s=args.batch / fast["wall_s"],
                   **step_timings(lib, fast))
        rows.append(row)
        print(f"{row['config']}: library {row['library_ms_per_step']:.2f} ms/step, rhmfast "
              f"{row['rhmfast_ms_per_step']:.2f} ms/step, speedup {row['speedup_wall']:.2f}x (wall), "
              f"{row['speedup_cpu']:.2f}x (CPU time)", flush=True)
    info = machine()
    goals = ({"v=32 m=8 s=2 L=3": 2.0, "v=16 m=4 s=2 L=6": 3.0} if device == "cpu"
             else {"v=32 m=8 s=2 L=3": 5.0, "v=16 m=4 s=2 L=6": 5.0})
    where = (f"{info['cpu']} ({info['cpu_flags']}), {info['cores']} cores, {info['torch_threads']} torch threads, "
             f"float32 GEMMs of the layers: {info['cpu_gemm']}"
             if device == "cpu" else f"{info['gpu']} (CUDA {info['cuda']}), host CPU {info['cpu']}, TF32 "
             f"{'on' if info['cudnn_allow_tf32'] or info['cuda_matmul_allow_tf32'] else 'off'}")
    lines = [f"# hCNN training throughput ({'CPU' if device == 'cpu' else 'GPU'})", "",
             f"{where}, torch {info['torch']}, {info['date']}. Width {args.width}, batch {args.batch}, SGD lr 0.1 momentum 0.9; a step includes "
             f"drawing the batch. Median over {rounds} rounds of {steps} steps, candidates interleaved, their "
             "order alternating.", "",
             "| config | library formulation (samples/s) | rhmfast (samples/s) | speedup (wall) | speedup (CPU time) "
             "| goal | met |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        goal = goals[r["config"]]
        lines.append(f"| {r['config']} | {r['library_samples_per_s']:,.0f} | {r['rhmfast_samples_per_s']:,.0f} | "
                     f"{r['speedup_wall']:.2f}x | {r['speedup_cpu']:.2f}x | ≥ {goal:g}x | "
                     f"{'yes' if r['speedup_wall'] >= goal else 'no'} |")
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    name = (f"train_{device_tag(device)}" + ("" if args.threads is None else f"_{args.threads}thread")
            + ("_quick" if args.quick else ""))  # a smoke run never replaces a full run's file
    paths = write_results(name, dict(machine=info, device=device, quick=args.quick, rounds=rounds, steps=steps,
                                     rows=rows),
                          markdown, args.out)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
