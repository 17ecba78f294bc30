"""What every learner family shares: where a model lives, and the generator its seed draws from."""
from __future__ import annotations

import itertools

import torch
from torch import nn


def device_of(model) -> torch.device:
    """Where a model's parameters (or buffers) live; the CPU for a model that has none. Trainers and
    observables generate their data there."""
    if isinstance(model, nn.Module):
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            return tensor.device
    return torch.device("cpu")


def seeded_generator(seed: int | None) -> torch.Generator | None:
    """A private CPU generator for a model's initialisation (None: torch's global one)."""
    return None if seed is None else torch.Generator().manual_seed(seed)
