"""Diagnostics of what a learner has learned about the RHM's hierarchy.

- ``synonymic_sensitivity``: S_{k,l}, how much layer k's representation moves when the rule choices below
  generative level l are redrawn (the input keeps its level-<=l symbols), relative to moving to an
  unrelated input.
- ``posterior_distance``: for the Ren learner, the distance between a level's normalised output on the
  first patch and the exact label posterior q^(l) of that patch (Cagnetta et al. 2024; Ren et al. 2026);
  ``synonym_purity``: how often that output lies nearest to its own parent's posterior.
"""
from __future__ import annotations

import torch

from rhmfast.models._common import device_of


def resample_below(grammar, symbols: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    """Tokens [n, s^L] (int64) obtained by re-expanding the level-``level`` symbols [n, s^level] of a latent tree
    down to the leaves with fresh, independent, uniform rule choices (drawn from generator, on its own device,
    so a CPU generator gives the same tokens on every device). The tokens are on the device of ``symbols``."""
    if not 0 <= level <= grammar.L:
        raise ValueError(f"rhmfast: level must be in [0, L = {grammar.L}], got {level}")
    table = grammar.table(symbols.device)  # [L, R, m, s], rows indexed by symbol
    current = symbols.long()
    for k in range(level, grammar.L):
        choice = torch.randint(grammar.m, current.shape, generator=generator, device=generator.device)
        current = table[k][current, choice.to(current.device)].long().flatten(1)
    return current


@torch.no_grad()
def synonymic_sensitivity(model, grammar, n: int = 2048, seed: int = 0) -> torch.Tensor:
    """S[k-1, l] for layers k = 1..K of model.layer_outputs and levels l = 0..L-1:

        mean ‖f_k(x) − f_k(x^(l))‖² / mean ‖f_k(x) − f_k(y)‖²,

    f_k the flattened output of layer k, x^(l) the input x with its levels <= l kept and everything below
    re-expanded with fresh rule choices (so l = 0 keeps only the label), y an independent input. 0 means
    layer k is invariant to those synonymic exchanges, about 1 that it is as sensitive to them as to a new
    input. x and y are the iid samples 0..n-1 and n..2n-1 of stream seed; the redraws come from a (CPU)
    generator seeded seed. The samples are drawn on the device of the model's parameters. A layer whose
    output does not vary over the n inputs (say every unit's ReLU is off) has no scale to compare with:
    its row is NaN (0/0), not a number.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"rhmfast: n must be an int >= 1, got {n!r}")
    device = device_of(model)
    x, _, tree = grammar.sample(n, seed=seed, return_tree=True, device=device)
    y, _ = grammar.sample(n, seed=seed, start=n, device=device)
    x, y = x.long(), y.long()
    gen = torch.Generator().manual_seed(seed)
    reps_x = [f.flatten(1) for f in model.layer_outputs(x)]
    reps_y = [f.flatten(1) for f in model.layer_outputs(y)]
    baseline = torch.stack([(a - b).square().sum(1).mean() for a, b in zip(reps_x, reps_y)])
    columns = []
    for level in range(grammar.L):
        x_l = resample_below(grammar, tree[level], level, gen).long()
        reps = [f.flatten(1) for f in model.layer_outputs(x_l)]
        columns.append(torch.stack([(a - b).square().sum(1).mean() for a, b in zip(reps_x, reps)]))
    return torch.stack(columns, dim=1) / baseline.unsqueeze(1)


def first_patch_posterior(grammar, tree: list[torch.Tensor], level: int) -> torch.Tensor:
    """q^(level) of each sample's first level-``level`` patch [n, n_classes] (float64), read from
    ``grammar.exact.label_posterior(level)`` through the patch's parent (tree[level-1][:, 0]), on the
    tree's device."""
    posterior = grammar.exact.label_posterior(level)[:, 0]  # synonyms share it: rule 0 suffices
    row_of = torch.full((max(grammar.v, grammar.n_classes),), -1, dtype=torch.int64)
    row_of[grammar.parents[level - 1]] = torch.arange(grammar.parents[level - 1].numel())
    parent = tree[level - 1][:, 0].long()
    return posterior.to(parent.device)[row_of.to(parent.device)[parent]]


@torch.no_grad()
def posterior_distance(learner, grammar, level: int, n: int = 4096, seed: int = 0, start: int = 0) -> float:
    """Mean ‖h^(level-1)_1(x) − q^(level)_{μ(x)}‖₂ over the iid samples start .. start+n-1 of stream seed:
    the learner's normalised output on the first level-``level`` patch against the exact label posterior
    of that patch. The samples are drawn on the device of the learner's parameters."""
    return first_patch_diagnostics(learner, grammar, level, n, seed, start)["posterior_distance"]


@torch.no_grad()
def synonym_purity(learner, grammar, level: int, n: int = 4096, seed: int = 0, start: int = 0) -> float:
    """The fraction of the iid samples start .. start+n-1 of stream seed whose learner output on the first
    level-``level`` patch lies nearest (L2) to the exact label posterior of that patch's own parent, among the
    posteriors of all level-(level-1) symbols that can stand first (parents with identical posteriors count
    as one). 1 when the level tells every synonym class apart."""
    return first_patch_diagnostics(learner, grammar, level, n, seed, start)["purity"]


@torch.no_grad()
def first_patch_diagnostics(learner, grammar, level: int, n: int = 4096, seed: int = 0, start: int = 0) -> dict:
    """posterior_distance and synonym_purity of one stage from one draw of the samples and one pass of the
    learner: dict(posterior_distance, purity)."""
    if not 1 <= level <= grammar.L:
        raise ValueError(f"rhmfast: level must be in [1, L = {grammar.L}], got {level}")
    x, _, tree = grammar.sample(n, seed=seed, start=start, return_tree=True, device=device_of(learner))
    width = grammar.s ** (grammar.L - level + 1)
    output = learner.embeddings(x[:, :width], down_to=level - 1)[-1][:, 0]
    own = first_patch_posterior(grammar, tree, level).to(output.device)
    candidates = grammar.exact.label_posterior(level)[:, 0]
    candidates = candidates[~candidates.isnan().any(1)].to(output.device)
    nearest = candidates[torch.cdist(output, candidates).argmin(1)]
    return dict(posterior_distance=(output - own).norm(dim=1).mean().item(),
                purity=((nearest - own).abs().amax(1) < 1e-12).double().mean().item())
