"""Training-step time of the transformers: rhmfast's AttentionOnly and Encoder against the references'
formulation, rebuilt here from their description (the 2024 library's MLA and the NeurIPS 2024 code's BERTuccia:
one-hot float input [B, d, v] times the token embedding, q, k, v from three products each divided by sqrt(E),
explicit softmax(q k^T / sqrt(head_dim)) v, every position through every block), at the references' RHM sizes.
rhmfast computes the same function on token ids with scaled_dot_product_attention, the first block's products
once per possible (token, position) input, and the last block at the last position only.

One training step = forward on a fixed batch, cross-entropy, backward, AdamW (lr 1e-3, weight decay 0.01): the
batch is built once (token ids for rhmfast, the one-hot floats the references' data sets hold for theirs), so
only the model and the optimizer are timed. Both candidates start from the same weights. Candidates run in
interleaved rounds (each runs `steps` steps per round; median over rounds; which one goes first alternates).
Wall time and process CPU time are both recorded.

    python benchmarks/bench_transformers.py                       # full run: L = 3, 4, 5 (several minutes)
    python benchmarks/bench_transformers.py --quick --out /tmp/x  # L = 3, 4; fewer rounds and steps
    python benchmarks/bench_transformers.py --device cuda         # on the GPU
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_tag, interleaved_steps, machine, set_up_device, step_timings, write_results  # noqa: E402

import rhmfast  # noqa: E402
from rhmfast.models import AttentionOnly, Encoder  # noqa: E402

# v = 32, m = 8, s = 2 as in the references' RHM runs; one block per level of the tree.
CONFIGS = [dict(v=32, m=8, s=2, L=3, embedding_dim=128, heads=4),
           dict(v=32, m=8, s=2, L=4, embedding_dim=256, heads=8),
           dict(v=32, m=8, s=2, L=5, embedding_dim=512, heads=16)]
QUICK_CONFIGS = CONFIGS[:2]
MODELS = {"attention-only": AttentionOnly, "encoder": Encoder}


class LibraryAttention(nn.Module):
    """MultiHeadAttention: key, query, value, projection [E, E]; q, k, v = x W^T / sqrt(E) each, split into heads;
    softmax(q k^T / sqrt(head_dim)) v; heads joined, times projection^T / sqrt(E)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.key, self.query, self.value, self.projection = (nn.Parameter(torch.randn(dim, dim)) for _ in range(4))

    def forward(self, x):
        B, T, C = x.shape
        k, q, v = (F.linear(x, w).view(B, T, self.heads, C // self.heads).transpose(1, 2) * C**-0.5
                   for w in (self.key, self.query, self.value))
        weight = F.softmax(q @ k.transpose(-2, -1) * (C // self.heads) ** -0.5, dim=-1)
        out = (weight @ v).transpose(1, 2).reshape(B, T, -1)
        return F.linear(out, self.projection) * self.projection.shape[-1] ** -0.5


class LibraryEncoderBlock(nn.Module):
    """x + attention(LN1(x)), then x + relu(LN2(x) W^T / sqrt(E)) R / sqrt(4E)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.sa = LibraryAttention(dim, heads)
        self.hidden = nn.Parameter(torch.randn(4 * dim, dim))
        self.readout = nn.Parameter(torch.randn(4 * dim, dim))
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x):
        x = x + self.sa(self.ln1(x))
        h = F.relu(F.linear(self.ln2(x), self.hidden) / x.shape[-1] ** 0.5)
        return x + h @ self.readout / self.readout.shape[0] ** 0.5


class LibraryTransformer(nn.Module):
    """MLA (encoder=False: attention-only blocks) or BERTuccia (encoder=True: pre-LN blocks and a final LN) on
    one-hot float input [B, T, v]; the read-out at the last position, divided by sqrt(E)."""

    def __init__(self, v, d, dim, heads, layers, n_classes, encoder):
        super().__init__()
        self.token_embedding = nn.Parameter(torch.randn(dim, v))
        self.position_embedding = nn.Embedding(d, dim)
        block = (lambda: LibraryEncoderBlock(dim, heads)) if encoder else (lambda: LibraryAttention(dim, heads))
        self.blocks = nn.Sequential(*[block() for _ in range(layers)])
        self.ln_f = nn.LayerNorm(dim) if encoder else nn.Identity()
        self.readout = nn.Parameter(torch.randn(n_classes, dim))

    def forward(self, x):
        _, T, C = x.shape
        x = F.linear(x, self.token_embedding) * C**-0.5 + self.position_embedding(torch.arange(T, device=x.device))
        x = self.ln_f(self.blocks(x))
        return F.linear(x[:, -1, :], self.readout) * self.readout.shape[-1] ** -0.5


def copy_weights(ours, library) -> None:
    """The library model starts from rhmfast's weights: its keys are rhmfast's without the "sa." of the
    attention-only blocks and the "ffwd." of the encoder's MLP."""
    encoder = isinstance(ours, Encoder)
    library.load_state_dict({(key if encoder else key.replace(".sa.", ".")).replace(".ffwd.", "."): value
                             for key, value in ours.state_dict().items()})


def make_step(model, x, y):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)

    def step():
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="L = 3, 4 only; 3 rounds of 3 steps instead of 7 of 5")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both candidates (default 1)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3 quick, else 7)")
    parser.add_argument("--steps", type=int, default=None, help="steps per round (default 3 quick, else 5)")
    args = parser.parse_args(argv)
    rounds, steps = (3, 3) if args.quick else (7, 5)
    rounds, steps = args.rounds or rounds, args.steps or steps
    device = set_up_device(parser, args)
    rows = []
    for cfg in QUICK_CONFIGS if args.quick else CONFIGS:
        grammar = rhmfast.RHM(cfg["v"], cfg["m"], cfg["s"], cfg["L"], seed=0)
        tokens, labels = grammar.sample(args.batch, seed=1, device=device)
        onehot = F.one_hot(tokens.long(), cfg["v"]).float()
        for kind, cls in MODELS.items():
            ours = cls(cfg["v"], grammar.input_dim, grammar.n_classes, cfg["embedding_dim"], cfg["heads"], cfg["L"],
                       seed=0)
            library = LibraryTransformer(cfg["v"], grammar.input_dim, cfg["embedding_dim"], cfg["heads"], cfg["L"],
                                         grammar.n_classes, encoder=cls is Encoder)
            copy_weights(ours, library)
            ours, library = ours.to(device), library.to(device)
            torch.testing.assert_close(ours(tokens), library(onehot), rtol=1e-3, atol=1e-3)  # the same function
            result = interleaved_steps({"library formulation": make_step(library, onehot, labels),
                              "rhmfast": make_step(ours, tokens, labels)}, rounds, steps, device)
            lib, fast = result["library formulation"], result["rhmfast"]
            row = dict(model=kind, config=f"v={cfg['v']} s={cfg['s']} L={cfg['L']} (d={grammar.input_dim})",
                       embedding_dim=cfg["embedding_dim"], heads=cfg["heads"], layers=cfg["L"], device=device,
                       batch=args.batch, **step_timings(lib, fast))
            rows.append(row)
            print(f"{kind} {row['config']} E={cfg['embedding_dim']}: library {row['library_ms_per_step']:.1f} ms/step, "
                  f"rhmfast {row['rhmfast_ms_per_step']:.1f} ms/step, speedup {row['speedup_wall']:.2f}x (wall), "
                  f"{row['speedup_cpu']:.2f}x (CPU time)", flush=True)
    info = machine()
    where = (f"{info['cpu']} ({info['cpu_flags']}), {info['cores']} cores, {info['torch_threads']} torch threads"
             if device == "cpu" else f"{info['gpu']} (CUDA {info['cuda']}), host CPU {info['cpu']}, TF32 "
             f"{'on' if info['cudnn_allow_tf32'] or info['cuda_matmul_allow_tf32'] else 'off'}")
    lines = [f"# Transformer training step ({'CPU' if device == 'cpu' else 'GPU'})", "",
             f"{where}, torch {info['torch']}, {info['date']}. Batch {args.batch} (fixed), AdamW lr 1e-3 weight "
             f"decay 0.01; a step is forward, cross-entropy, backward and the optimizer step. Median over {rounds} "
             f"rounds of {steps} steps, candidates interleaved, their order alternating.", "",
             "| model | config | E | heads | layers | library formulation (ms/step) | rhmfast (ms/step) | "
             "speedup (wall) | speedup (CPU time) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['config']} | {r['embedding_dim']} | {r['heads']} | {r['layers']} | "
                     f"{r['library_ms_per_step']:.1f} | {r['rhmfast_ms_per_step']:.1f} | {r['speedup_wall']:.2f}x | "
                     f"{r['speedup_cpu']:.2f}x |")
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    name = f"transformers_{device_tag(device)}" + ("_quick" if args.quick else "")
    paths = write_results(name, dict(machine=info, device=device, quick=args.quick, rounds=rounds, steps=steps,
                                     rows=rows), markdown, args.out)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
