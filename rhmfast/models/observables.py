"""Diagnostics of what a learner has learned about the RHM's hierarchy.

- ``synonymic_sensitivity``: S_{k,l}, how much layer k's representation moves when the rule choices below
  generative level l are redrawn (the input keeps its level-<=l symbols), relative to moving to an
  unrelated input.
- ``noise_sensitivity``: N_{k,l}, the same when one level-l symbol is replaced by a random different symbol
  and expanded again (``replace_and_expand``): a change of meaning, where the synonyms keep it.
- ``posterior_distance``: for the Ren learner, the distance between a level's normalised output on the
  first patch and the exact label posterior q^(l) of that patch (Cagnetta et al. 2024; Ren et al. 2026);
  ``synonym_purity``: how often that output lies nearest to its own parent's posterior.
"""
from __future__ import annotations

import math

import torch

from rhmfast.data.variants import dense_strings, rule_choices
from rhmfast.models._common import device_of


def resample_below(grammar, symbols: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    """Tokens [n, s^L] (int64) obtained by re-expanding the level-``level`` symbols [n, s^level] of a latent tree
    down to the leaves with fresh, independent rule choices from the grammar's law (uniform, or its Zipf
    rule probabilities; drawn from generator, on its own device, so a CPU generator gives the same tokens on
    every device). The tokens are dense strings, on the device of ``symbols``."""
    if not 0 <= level <= grammar.L:
        raise ValueError(f"rhmfast: level must be in [0, L = {grammar.L}], got {level}")
    table = grammar.table(symbols.device)  # [L, R, m, s], rows indexed by symbol
    current = symbols.long()
    for k in range(level, grammar.L):
        choice = rule_choices(grammar, k, current.shape, generator)
        current = table[k][current, choice.to(current.device)].long().flatten(1)
    return current


def _dense_tree(grammar, tree: list[torch.Tensor]) -> list[torch.Tensor]:
    """The dense levels (int64, [n, s^l]) of a latent tree as ``sample(return_tree=True)`` returns it: the
    tree itself for a dense grammar, the informative symbols of its sparse strings for a sparse one."""
    if not isinstance(tree, (list, tuple)) or len(tree) != grammar.L + 1:
        raise ValueError(f"rhmfast: tree must be a list of L + 1 = {grammar.L + 1} levels (sample(return_tree=True)), "
                         f"got {type(tree).__name__}{f' of {len(tree)}' if isinstance(tree, (list, tuple)) else ''}")
    if not grammar.sparsity:
        return [level.long() for level in tree]
    return [tree[0].long()] + [dense_strings(grammar, tree[level], level).long() for level in range(1, grammar.L + 1)]


def _as_input(grammar, tree: list[torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
    """Dense tokens [n, s^L] as inputs of the grammar: for a sparse grammar in the slots of the tree's tokens."""
    if not grammar.sparsity:
        return dense
    tokens = tree[grammar.L].long().clone()
    tokens[tokens != grammar.blank] = dense.to(tokens.device).reshape(-1)
    return tokens


def replace_and_expand(grammar, tree: list[torch.Tensor], level: int, generator: torch.Generator) -> torch.Tensor:
    """Inputs [n, input_dim] (int64, on the tree's device): those of the latent tree ``tree`` (as
    ``grammar.sample(return_tree=True)`` returns it) with one level-``level`` symbol per sample, at a uniformly
    random node, replaced by a uniformly random different symbol of that level (level 0: another label; a
    level below the root: another symbol owning rules at that level, any token at level L), which is
    expanded again to the leaves with fresh rule choices from the grammar's law; everything outside that
    node's subtree is kept. A sparse grammar keeps the slots: the new leaves take the places of the old.

    The node, the symbol and the rules are drawn, in that order, from generator on its own device (a CPU
    generator gives the same inputs on every device). ValueError if level is outside [0, L] or has fewer than
    two symbols to choose from."""
    if not 0 <= level <= grammar.L:
        raise ValueError(f"rhmfast: level must be in [0, L = {grammar.L}], got {level}")
    dense = _dense_tree(grammar, tree)
    symbols, device = dense[level], dense[level].device
    candidates = _candidates(grammar, level)
    if candidates.numel() < 2:
        raise ValueError(f"rhmfast: level {level} has a single symbol ({int(candidates[0])}): no other to replace "
                         "it with")
    index_of = torch.full((int(candidates.max()) + 1,), -1, dtype=torch.int64)
    index_of[candidates] = torch.arange(candidates.numel())
    flat = symbols.cpu()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= index_of.numel()
                         or bool((index_of[flat] < 0).any())):
        raise ValueError(f"rhmfast: tree[{level}] holds symbols that do not belong to level {level} of this grammar")
    current = index_of[flat]
    n = symbols.shape[0]
    gen_device = generator.device
    node = torch.randint(symbols.shape[1], (n,), generator=generator, device=gen_device).to(device)
    shift = torch.randint(candidates.numel() - 1, (n,), generator=generator, device=gen_device).cpu()
    rows = torch.arange(n)
    replaced = candidates[(current[rows, node.cpu()] + 1 + shift) % candidates.numel()].to(device).unsqueeze(1)
    subtree = resample_below(grammar, replaced, level, generator)  # [n, s^(L - level)]
    width = subtree.shape[1]
    leaves = node.unsqueeze(1) * width + torch.arange(width, device=device)
    tokens = dense[grammar.L].clone().scatter_(1, leaves, subtree)
    return _as_input(grammar, tree, tokens)


def _candidates(grammar, level: int) -> torch.Tensor:
    """The symbols a level-``level`` node may hold (int64, increasing): those owning rules at that level, every
    token at level L."""
    return torch.arange(grammar.v) if level == grammar.L else grammar.parents[level]


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
    its row is NaN (0/0), not a number. A sparse grammar's inputs keep their slots.
    """
    def synonyms(tree, level, gen):
        dense = _dense_tree(grammar, tree)
        return _as_input(grammar, tree, resample_below(grammar, dense[level], level, gen))

    return _relative_change(model, grammar, n, seed, range(grammar.L), synonyms)


@torch.no_grad()
def noise_sensitivity(model, grammar, n: int = 2048, seed: int = 0) -> torch.Tensor:
    """N[k-1, l] for layers k = 1..K of model.layer_outputs and levels l = 0..L:

        mean ‖f_k(x) − f_k(x̃^(l))‖² / mean ‖f_k(x) − f_k(y)‖²,

    f_k the flattened output of layer k, x̃^(l) the input x with one level-l symbol, at a uniformly random
    node, replaced by a random different symbol and expanded again with fresh rule choices
    (``replace_and_expand``: l = 0 draws the input anew from another label, l = L changes one token), y an
    independent input. The counterpart of ``synonymic_sensitivity``, with the same x, y, normalisation and
    conventions (the replacements come from a CPU generator seeded seed): a layer that has learned the
    level-l symbols is invariant to their synonyms but not to this noise. A level with a single symbol has
    nothing to replace it with: its column is NaN. Sparse grammars are supported (the slots are kept).
    """
    def noise(tree, level, gen):
        return None if _candidates(grammar, level).numel() < 2 else replace_and_expand(grammar, tree, level, gen)

    return _relative_change(model, grammar, n, seed, range(grammar.L + 1), noise)


def _relative_change(model, grammar, n: int, seed: int, levels, perturb) -> torch.Tensor:
    """[K, len(levels)]: per layer and level, mean ‖f_k(x) − f_k(perturb(tree, level, gen))‖² over the iid
    samples 0..n-1 of stream seed (tree their latent trees, gen a CPU generator seeded seed), divided by
    mean ‖f_k(x) − f_k(y)‖² for the samples y = n..2n-1; a column is NaN where perturb returns None."""
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
    for level in levels:
        x_l = perturb(tree, level, gen)
        if x_l is None:
            columns.append(torch.full_like(baseline, math.nan))
            continue
        reps = [f.flatten(1) for f in model.layer_outputs(x_l.long())]
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
