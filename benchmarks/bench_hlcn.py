"""Training step time of the hierarchical LCN (untied weights per patch): rhmfast's LocallyConnected (the fused
locally_connected op) against the 2024 library's hLCN formulation, rebuilt here from its description (one-hot
float input [B, v, s^L]; per layer F.unfold into patches, the broadcast product with a filter [H, C_in, P, s]
summed over C_in and s, divided by sqrt(C_in*s), ReLU; mean; readout), with the hCNN (rhmfast's
HierarchicalCNN and the library's F.conv1d formulation) beside them for the cost of untying the weights.

One step = forward, cross-entropy, backward, SGD (lr 0.1, momentum 0.9) on one fixed batch (the library builds
its one-hot inputs once for the whole data set, so no data work is timed). Candidates run in interleaved
rounds (each runs `steps` steps per round; median over rounds; the first candidate rotates), so neither a load
change on the machine nor the order biases any of them. Before timing, rhmfast's LocallyConnected loaded
with the library formulation's weights must give its logits (float32 rounding), so both compute one function.

    python benchmarks/bench_hlcn.py                  # full run
    python benchmarks/bench_hlcn.py --quick          # 1 warm-up step, 3 rounds of 3 steps
    python benchmarks/bench_hlcn.py --device cuda    # on the GPU
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import CONFIGS, LibraryHCNN, make_step  # noqa: E402
from common import device_tag, interleaved_steps, machine, set_up_device, write_results  # noqa: E402

import rhmfast  # noqa: E402
from rhmfast.models import HierarchicalCNN, LocallyConnected  # noqa: E402

CANDIDATES = ("library hLCN", "rhmfast hLCN", "library hCNN", "rhmfast hCNN")


class LibraryHLCN(nn.Module):
    """The library's hLCN (models/lcn.py): filters [H, C_in, P, s] ~ N(0,1), per layer the patches of x [B, C, T]
    (F.unfold) times the filter, summed over C_in and s, / sqrt(C_in*s), ReLU; mean; beta / sqrt(H)."""

    def __init__(self, v, width, s, L, n_classes):
        super().__init__()
        self.s = s
        self.filters = nn.ParameterList([nn.Parameter(torch.randn(width, v if l == 0 else width, s ** (L - 1 - l), s))
                                         for l in range(L)])
        self.beta = nn.Parameter(torch.randn(width, n_classes))

    def forward(self, x):
        for f in self.filters:
            c, n_patches, s = f.shape[1:]
            patches = F.unfold(x.unsqueeze(-1), kernel_size=(s, 1), stride=s).reshape(-1, c, s, n_patches)
            x = torch.relu((patches.transpose(-1, -2)[:, None] * f).sum(dim=[-1, -3]) * (c * s) ** -0.5)
        return x.mean(-1) @ self.beta / self.beta.shape[0] ** 0.5

    def reference_state_dict(self):
        """The weights under the library's keys (LocallyConnected.from_reference reads them)."""
        state = {"readout": self.beta.detach()}
        state.update({f"hidden.{l}.0.filter": f.detach() for l, f in enumerate(self.filters)})
        return state


def candidates_for(cfg, width, batch, device):
    """The four models on one fixed batch (token ids for rhmfast, one-hot floats for the library), as step
    functions; the hLCNs start from the same weights, checked to give the same logits."""
    grammar = rhmfast.RHM(cfg["v"], cfg["m"], cfg["s"], cfg["L"], seed=0)
    tokens, labels = grammar.sample(batch, seed=1, device=device)
    onehot = F.one_hot(tokens.long(), cfg["v"]).permute(0, 2, 1).float()
    torch.manual_seed(0)
    shape = (cfg["v"], width, cfg["s"], cfg["L"], grammar.n_classes)
    library_lcn = LibraryHLCN(*shape).to(device)
    ours_lcn = LocallyConnected.from_reference(library_lcn.reference_state_dict(), norm="std")
    with torch.no_grad():
        torch.testing.assert_close(ours_lcn(tokens), library_lcn(onehot), rtol=1e-4, atol=1e-4)
    models = {"library hLCN": (library_lcn, onehot), "rhmfast hLCN": (ours_lcn, tokens),
              "library hCNN": (LibraryHCNN(*shape).to(device), onehot),
              "rhmfast hCNN": (HierarchicalCNN(*shape, seed=0).to(device), tokens)}
    return {name: make_step(model, lambda x=x: (x, labels)) for name, (model, x) in models.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 warm-up step, then 3 rounds of 3 steps (else 3, then 7 rounds of 10)")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every candidate (default: torch's own choice)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                        help="folder of the result files")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3 quick, else 7)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per round (default 3 quick, else 10; the library's L = 6 hLCN takes ~10 s a step "
                             "on one CPU core)")
    args = parser.parse_args(argv)
    rounds, steps = (3, 3) if args.quick else (7, 10)
    rounds, steps = args.rounds or rounds, args.steps or steps
    device = set_up_device(parser, args)
    rows = []
    for cfg in CONFIGS:
        result = interleaved_steps(candidates_for(cfg, args.width, args.batch, device), rounds, steps, device,
                                   warmup=1 if args.quick else 3)
        ms = {name: result[name]["wall_s"] * 1e3 for name in CANDIDATES}
        row = dict(config=f"v={cfg['v']} m={cfg['m']} s={cfg['s']} L={cfg['L']}", device=device, width=args.width,
                   batch=args.batch, ms_per_step=ms,
                   cpu_ms_per_step={name: result[name]["cpu_s"] * 1e3 for name in CANDIDATES},
                   wall_rounds_ms={name: [t * 1e3 for t in result[name]["wall_all_s"]] for name in CANDIDATES},
                   speedup_hlcn=ms["library hLCN"] / ms["rhmfast hLCN"],
                   speedup_hcnn=ms["library hCNN"] / ms["rhmfast hCNN"],
                   hlcn_over_hcnn=ms["rhmfast hLCN"] / ms["rhmfast hCNN"])
        rows.append(row)
        print(f"{row['config']}: " + ", ".join(f"{name} {ms[name]:.2f} ms" for name in CANDIDATES)
              + f"; hLCN speedup {row['speedup_hlcn']:.2f}x", flush=True)
    info = machine()
    where = (f"{info['cpu']} ({info['cpu_flags']}), {info['cores']} cores, {info['torch_threads']} torch threads, "
             f"float32 GEMMs of the layers: {info['cpu_gemm']}"
             if device == "cpu" else f"{info['gpu']} (CUDA {info['cuda']}), host CPU {info['cpu']}, TF32 off")
    lines = [f"# hLCN training step ({'CPU' if device == 'cpu' else 'GPU'})", "",
             f"{where}, torch {info['torch']}, {info['date']}. Width {args.width}, batch {args.batch}, SGD lr 0.1 "
             f"momentum 0.9 on one fixed batch. Median over {rounds} rounds of {steps} steps, candidates interleaved, "
             "the first one rotating.", "",
             "| config | " + " | ".join(f"{name} (ms/step)" for name in CANDIDATES)
             + " | hLCN speedup | hCNN speedup | rhmfast hLCN / hCNN |", "|---" * (len(CANDIDATES) + 4) + "|"]
    for r in rows:
        lines.append(f"| {r['config']} | " + " | ".join(f"{r['ms_per_step'][name]:.2f}" for name in CANDIDATES)
                     + f" | {r['speedup_hlcn']:.2f}x | {r['speedup_hcnn']:.2f}x | {r['hlcn_over_hcnn']:.2f} |")
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    name = (f"hlcn_{device_tag(device)}" + ("" if args.threads is None else f"_{args.threads}thread")
            + ("_quick" if args.quick else ""))  # a smoke run never replaces a full run's file
    paths = write_results(name, dict(machine=info, device=device, quick=args.quick, rounds=rounds, steps=steps,
                                     rows=rows), markdown, args.out)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
