"""Exact statistics (grammar.exact): first-token transition matrices and label posteriors of the first
patch, against counts from the rules, a brute-force enumeration of the whole data space, and an
empirical estimate from sampled latent trees."""
from __future__ import annotations

import math

import pytest
import torch

import rhmfast

from conftest import SAMPLERS, random_grammar

EMPIRICAL_SEED = 777  # fixed so the statistical comparison does not flake


def patch_ids(g, level, patches):
    """(parent row, rule index) of level-``level`` patches [n, s] in rules[level - 1]; -1 if none."""
    powers = torch.tensor([g.v ** (g.s - 1 - k) for k in range(g.s)])
    codes = (g.rules[level - 1] * powers).sum(-1).reshape(-1)  # [n_parents * m], distinct
    match = (patches.long() * powers).sum(-1).unsqueeze(1) == codes.unsqueeze(0)
    flat = torch.where(match.any(1), match.long().argmax(1), torch.full((patches.shape[0],), -1))
    return torch.where(flat >= 0, flat // g.m, -1), torch.where(flat >= 0, flat % g.m, -1)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_transition_matches_rule_counts(sampler, rng):
    """transition(l)[a, b] = #{rules of a with first child b} / m; rows of parents sum to 1, rows of
    symbols without rules (pcsl-2023) are zero; float64 [n_symbols(l), v]."""
    for _ in range(4):
        g = random_grammar(rng, sampler)
        for level in range(g.L):
            t = g.exact.transition(level)
            n_symbols = g.n_classes if level == 0 else g.v
            assert t.dtype == torch.float64 and t.shape == (n_symbols, g.v)
            expected = torch.zeros(n_symbols, g.v, dtype=torch.float64)
            for row, symbol in enumerate(g.parents[level].tolist()):
                for c in range(g.m):
                    expected[symbol, g.rules[level][row, c, 0]] += 1
            expected /= g.m
            assert torch.allclose(t, expected, atol=1e-15)
            owners = torch.zeros(n_symbols, dtype=torch.bool)
            owners[g.parents[level]] = True
            assert torch.allclose(t.sum(1)[owners], torch.ones(int(owners.sum()), dtype=torch.float64))
            assert (t[~owners] == 0).all()


def test_level_arguments_are_checked():
    """Levels outside the documented ranges raise ValueError naming 'level'."""
    g = rhmfast.RHM(4, 2, 2, 2, seed=0)
    for bad in (-1, 2):
        with pytest.raises(ValueError, match="level"):
            g.exact.transition(bad)
    for bad in (0, 3):
        with pytest.raises(ValueError, match="level"):
            g.exact.label_posterior(bad)
    with pytest.raises(ValueError, match="level"):
        g.exact.first_symbol_law(3)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_label_posterior_level_one_is_one_hot_of_the_parent(sampler, rng):
    """At level 1 the first patch's posterior is the one-hot vector of the label that owns it."""
    g = random_grammar(rng, sampler)
    q = g.exact.label_posterior(1)
    assert q.shape == (g.parents[0].numel(), g.m, g.n_classes)
    expected = torch.nn.functional.one_hot(g.parents[0], g.n_classes).double()
    assert torch.equal(q, expected.unsqueeze(1).expand(-1, g.m, -1))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_label_posterior_equals_enumeration_of_all_data(sampler, rng):
    """Decoding every datum of a small grammar (all equally likely) gives the exact joint law of
    (label, first patch at level l): label_posterior(l) equals it; synonyms share a posterior; patches
    whose parent is never first are NaN; first_symbol_law(l) equals the enumerated law too."""
    g = random_grammar(rng, sampler, max_pmax=4096, min_pmax=64, max_tokens=16)
    tokens, labels, tree = g.decode(torch.arange(g.pmax), return_tree=True, dtype=torch.int64)
    for level in range(g.L + 1):
        law = g.exact.first_symbol_law(level)
        counts = torch.zeros_like(law)
        counts.index_put_((labels, tree[level][:, 0]), torch.ones(g.pmax, dtype=torch.float64), accumulate=True)
        assert torch.allclose(law, counts / g.pmax, atol=1e-12)
    for level in range(1, g.L + 1):
        q = g.exact.label_posterior(level)
        assert torch.equal(q.isnan(), q[:, :1].isnan().expand_as(q))
        assert torch.allclose(q, q[:, :1].expand_as(q), equal_nan=True), "synonyms must share q"
        rows, rules = patch_ids(g, level, tree[level][:, :g.s])
        assert (rows >= 0).all()
        for p in range(q.shape[0]):
            for c in range(g.m):
                here = (rows == p) & (rules == c)
                if here.any():
                    freq = torch.bincount(labels[here], minlength=g.n_classes).double() / here.sum()
                    assert torch.allclose(q[p, c], freq, atol=1e-12), (level, p, c)
                else:
                    assert q[p, c].isnan().all(), (level, p, c)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_label_posterior_matches_sampled_frequencies(sampler):
    """Empirical label frequencies given the first level-l patch of sampled latent trees match the exact
    posterior within 5 binomial standard deviations (fixed seed, patches seen >= 200 times)."""
    g = rhmfast.RHM(5, 2, 2, 4, seed=EMPIRICAL_SEED, rules=sampler)
    n = 40000
    _, labels, tree = g.sample(n, seed=EMPIRICAL_SEED, return_tree=True, dtype=torch.int64)
    checked = 0
    for level in range(1, g.L + 1):
        q = g.exact.label_posterior(level)
        rows, rules = patch_ids(g, level, tree[level][:, :g.s])
        key = rows * g.m + rules
        for k in key.unique().tolist():
            here = key == k
            count = int(here.sum())
            if count < 200:
                continue
            freq = torch.bincount(labels[here], minlength=g.n_classes).double() / count
            exact = q[k // g.m, k % g.m]
            tol = 5 * torch.sqrt(exact * (1 - exact) / count) + 1e-9
            assert ((freq - exact).abs() <= tol).all(), (level, k, freq, exact)
            checked += 1
    assert checked >= 20
    assert math.isclose(float(g.exact.first_symbol_law(g.L).sum()), 1.0, rel_tol=1e-12)
