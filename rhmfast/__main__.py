"""Command line of rhmfast: ``python -m rhmfast demo`` (what ``make demo`` runs) and ``info``."""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
from tqdm import tqdm

import rhmfast


def demo(args) -> None:
    """Generate a large RHM data set in chunks, report throughput, and check it against the grammar."""
    grammar = rhmfast.RHM(args.v, args.m, args.s, args.L, seed=args.seed_rules)
    os.makedirs(args.out, exist_ok=True)
    grammar.save(os.path.join(args.out, "grammar.json"))
    print(f"{grammar}: input length {grammar.input_dim}, pmax = {grammar.pmax:.3e}")
    print("backends:", json.dumps(rhmfast.backends()))
    tokens = torch.empty(args.n, grammar.input_dim, dtype=torch.uint8)
    labels = torch.empty(args.n, dtype=torch.int64)
    start = time.perf_counter()
    with tqdm(total=args.n, unit="sample", unit_scale=True, desc="generating") as bar:
        for first in range(0, args.n, args.chunk):
            count = min(args.chunk, args.n - first)
            x, y = grammar.sample(count, seed=args.seed_sample, start=first)
            tokens[first:first + count], labels[first:first + count] = x, y
            bar.update(count)
    seconds = time.perf_counter() - start
    gb = tokens.numel() / 1e9
    print(f"generated {args.n:,} samples ({gb:.2f} GB of uint8 tokens) in {seconds:.2f} s: "
          f"{args.n / seconds:,.0f} samples/s, {gb / seconds:.2f} GB/s")
    # Chunking never changes a sample: the first chunks again, drawn in one call.
    head = min(args.n, 4 * args.chunk)
    x, y = grammar.sample(head, seed=args.seed_sample)
    if not (torch.equal(x, tokens[:head]) and torch.equal(y, labels[:head])):
        raise RuntimeError("chunked and one-call samples differ")
    print(f"check: the first {head:,} samples drawn in one call equal the chunked ones")
    path = os.path.join(args.out, "tokens.pt")
    torch.save({"tokens": tokens[: args.save], "labels": labels[: args.save]}, path)
    print(f"wrote {os.path.join(args.out, 'grammar.json')} and the first {args.save:,} samples to {path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="rhmfast", description="Fast, exact Random Hierarchy Model tools")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="print the available backends")
    info.set_defaults(run=lambda args: print(json.dumps(rhmfast.backends(), indent=1)))
    d = commands.add_parser("demo", help="generate a large RHM data set and report throughput")
    d.add_argument("--v", "--num_features", type=int, default=32)
    d.add_argument("--m", type=int, default=8)
    d.add_argument("--s", type=int, default=2)
    d.add_argument("--L", "--num_layers", type=int, default=6)
    d.add_argument("--n", type=int, default=1 << 23, help="number of samples")
    d.add_argument("--chunk", type=int, default=1 << 18)
    d.add_argument("--seed_rules", type=int, default=0)
    d.add_argument("--seed_sample", type=int, default=1)
    d.add_argument("--save", type=int, default=1 << 16, help="how many samples to write to disk")
    d.add_argument("--out", default="rhm-demo")
    d.set_defaults(run=demo)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
