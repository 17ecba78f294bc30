"""The shallow baseline: a fully-connected network on the one-hot input, built from token ids on the fly."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rhmfast._checks import check_positive_int, check_seed, check_tokens
from rhmfast.models._common import seeded_generator


class FullyConnected(nn.Module):
    """The shallow baseline: an MLP on the flattened one-hot input [B, d*v] (built on the fly from token
    ids, never stored), depth hidden layers of the given width with ReLU, then a linear readout."""

    lr_scale = 1.0  # no mean-field learning-rate scaling

    def __init__(self, v: int, d: int, width: int, depth: int, n_classes: int, seed: int | None = None):
        super().__init__()
        for name, value in (("v", v), ("d", d), ("width", width), ("depth", depth), ("n_classes", n_classes)):
            check_positive_int(name, value)
        self.v, self.d, self.n_classes, self.seed = v, d, n_classes, check_seed("seed", seed)
        sizes = [d * v] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(width, n_classes)
        if seed is not None:  # nn.Linear's initialisation, drawn from a private generator
            gen = seeded_generator(seed)
            with torch.no_grad():
                for layer in [*self.hidden, self.out]:
                    bound = 1.0 / math.sqrt(layer.in_features)
                    layer.weight.uniform_(-bound, bound, generator=gen)
                    layer.bias.uniform_(-bound, bound, generator=gen)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # Integer ids [B, d] in [0, v) (floats were truncated and out-of-range ids hit one_hot's bare error).
        check_tokens("FullyConnected", tokens, self.v, self.d, f"d={self.d}")
        h = F.one_hot(tokens.long(), self.v).flatten(1).to(self.out.weight.dtype)
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return self.out(h)
