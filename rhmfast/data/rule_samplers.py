"""The samplers of RHM production rules (Cagnetta et al. 2024). Each returns, per level l = 0..L-1 (0 = root), the
symbols that own rules (``parents``, int64 [n_parents]) and their rules (int64 [n_parents, m, s]).

All randomness comes from a private ``random.Random(seed)``: the results are deterministic and never
disturb the global ``random`` state. s-tuples are handled as integers in [0, v^s) read in base v, first
element most significant (itertools.product order), so no sampler enumerates v^s tuples unless the law
it reproduces requires it.
"""
from __future__ import annotations

import random
from array import array

import torch

# pcsl-2023 shuffles the list of all v^s tuples (its law needs every one of them).
MAX_TUPLES_2023 = 1 << 24


def tuples_from_indices(indices, v: int, s: int) -> torch.Tensor:
    """Integers in [0, v^s) -> their base-v digits, most significant first: int64 [len, s]."""
    index = torch.as_tensor(list(indices), dtype=torch.int64)
    powers = torch.tensor([v ** (s - 1 - k) for k in range(s)], dtype=torch.int64)
    return torch.div(index.unsqueeze(1), powers, rounding_mode="floor") % v


def pcsl(v: int, n_classes: int, m: int, s: int, L: int, seed: int):
    """The 2024 pcsl-epfl random-hierarchy-model law: one random stream; level 0 samples n_classes*m
    distinct tuples dealt m per class, each further level samples v*m tuples dealt m per symbol."""
    rng = random.Random(seed)
    n_tuples = v**s
    levels = []
    for level in range(L):
        n_parents = n_classes if level == 0 else v
        chosen = rng.sample(range(n_tuples), n_parents * m)
        levels.append((torch.arange(n_parents), tuples_from_indices(chosen, v, s).reshape(n_parents, m, s)))
    return levels


def pcsl_2023(v: int, n_classes: int, m: int, s: int, L: int, seed: int):
    """The 2023 pcsl-epfl hierarchy-learning law: per level, shuffle all v^s tuples and deal m per
    parent, the parents being the symbols that occur in the level above (in increasing order)."""
    rng = random.Random(seed)
    n_tuples = v**s
    if n_tuples > MAX_TUPLES_2023:
        raise ValueError(f"rules='pcsl-2023' shuffles all v^s tuples; v^s = {n_tuples} exceeds {MAX_TUPLES_2023}")
    parents = torch.arange(n_classes)
    levels = []
    for level in range(L):
        need = m * parents.numel()
        if need > n_tuples:
            raise ValueError(
                f"m * n_parents must be <= v^s: level {level} has {parents.numel()} parents, "
                f"m * n_parents = {need} > v^s = {n_tuples}"
            )
        order = array("q", range(n_tuples))
        rng.shuffle(order)
        rules = tuples_from_indices(order[:need], v, s).reshape(parents.numel(), m, s)
        levels.append((parents, rules))
        parents = torch.unique(rules)
    return levels


def first_token_uniform(v: int, n_classes: int, m: int, s: int, L: int, seed: int):
    """Ren et al. (App. B): per level, every symbol a of the level below starts exactly m patches
    (m distinct suffixes from v^(s-1)); the v*m patches are dealt to the v parents at random, m each."""
    rng = random.Random(seed)
    n_suffixes = v ** (s - 1)
    levels = []
    for _ in range(L):
        patches = [a * n_suffixes + suffix for a in range(v) for suffix in rng.sample(range(n_suffixes), m)]
        rng.shuffle(patches)
        levels.append((torch.arange(v), tuples_from_indices(patches, v, s).reshape(v, m, s)))
    return levels


SAMPLERS = {"pcsl": pcsl, "pcsl-2023": pcsl_2023, "first-token-uniform": first_token_uniform}
