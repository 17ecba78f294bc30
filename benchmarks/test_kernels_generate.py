"""pytest-benchmark timings of RHM generation, one table per grammar (group "generate tokens ..." and
"generate one-hot ..."; run with --benchmark-group-by=group).

Token ids (uint8 [n, s^L], 2^20 tokens a call), providers:
- rhmfast: `rhmfast.RHM.sample`;
- reference: the pure-PyTorch reference kernel `rhmfast.reference.rhm_sample.rhm_sample` (the same bits);
- per_level: a label draw, then per level one randint and one gather from the rule table, as existing
  code generates RHM data (bench_generate.py's baseline).

One-hot float32 [n, v, s^L] (about 32 MiB a call), providers:
- rhmfast: `rhmfast.one_hot` of `RHM.sample`'s tokens;
- per_level: the per-level sampler, then `F.one_hot(...).float()` viewed channels-first (a view, as
  bench_generate.py's baseline: the copy to channels-first is left to whoever reads it).

Before timing, each provider's output is checked: every sample must parse, bottom-up through the rule
tables, to its label, and rhmfast's and the reference's first samples must be the same bits.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rhmfast
from rhmfast.reference import rhm_sample as reference

GRAMMARS = [(32, 8, 2, 3), (16, 4, 2, 6), (8, 4, 3, 4)]
TOKENS_PER_CALL = 1 << 20
ONE_HOT_BYTES_PER_CALL = 1 << 25
SEED = 1
SAME_BITS_PREFIX = 256  # samples compared between rhmfast and the reference


def grammar_id(config) -> str:
    return "v{}_m{}_s{}_L{}".format(*config)


def per_level_sample(tables, grammar, n, generator, dtype):
    """A label draw, then per level a randint of rule choices and a gather from that level's table."""
    x = torch.randint(0, grammar.n_classes, (n, 1), generator=generator, device=tables.device)
    labels = x.squeeze(1)
    for rules in tables:
        choice = torch.randint(0, grammar.m, x.shape, generator=generator, device=tables.device)
        x = rules[x, choice].flatten(1)
    return x.to(dtype), labels


def per_level_sampler(grammar, device, dtype):
    """fn(n) -> (tokens, labels) of per_level_sample, its int64 tables made once (as a user's code would
    hold them) and its generator advancing from call to call."""
    tables = grammar.table(device).long()
    generator = torch.Generator(device=device).manual_seed(SEED)
    return lambda n: per_level_sample(tables, grammar, n, generator, dtype)


def token_providers(grammar, device):
    """provider -> fn(n) returning (tokens [n, s^L] uint8, labels [n])."""
    table = grammar.table(device)
    return {
        "rhmfast": lambda n: grammar.sample(n, seed=SEED, device=device),
        "reference": lambda n: reference.rhm_sample(table, grammar.n_classes, n, SEED, 0, "iid", torch.uint8,
                                                    False)[:2],
        "per_level": per_level_sampler(grammar, device, torch.uint8),
    }


def check_derivation(grammar, tokens, labels):
    """Every sample is a derivation of its label: parsed bottom-up, each s-tuple of a level is a rule of
    one parent (the grammar is unambiguous, so a tuple -> parent lookup decides it), and the root is
    the label."""
    s, v = grammar.s, grammar.v
    digits = v ** torch.arange(s - 1, -1, -1)
    x = tokens.long().cpu()
    for level in reversed(range(grammar.L)):
        rules = grammar.rules[level]
        parent_of = torch.full((v**s,), -1, dtype=torch.int64)
        parent_of[(rules * digits).sum(-1).flatten()] = grammar.parents[level].repeat_interleave(grammar.m)
        x = parent_of[(x.view(len(x), -1, s) * digits).sum(-1)]
        assert (x >= 0).all(), f"a {s}-tuple of level {level + 1} is no rule of the grammar"
    assert torch.equal(x.squeeze(1), labels.long().cpu()), "a sample does not derive from its label"


def check_same_bits(providers, provider, tokens, labels):
    """rhmfast and the reference are defined to give the same samples for the same seed."""
    other = {"rhmfast": "reference", "reference": "rhmfast"}.get(provider)
    if other is not None:
        want_tokens, want_labels = providers[other](SAME_BITS_PREFIX)
        assert torch.equal(tokens[:SAME_BITS_PREFIX], want_tokens)
        assert torch.equal(labels[:SAME_BITS_PREFIX], want_labels)


@pytest.mark.parametrize("provider", ["rhmfast", "reference", "per_level"])
@pytest.mark.parametrize("config", GRAMMARS, ids=grammar_id)
def test_generate_tokens(bench, device, config, provider):
    grammar = rhmfast.RHM(*config)
    n = TOKENS_PER_CALL // grammar.input_dim
    providers = token_providers(grammar, device)
    sample = providers[provider]
    tokens, labels = sample(n)  # the checked call is also the warm-up
    assert tokens.shape == (n, grammar.input_dim) and tokens.dtype == torch.uint8
    check_derivation(grammar, tokens, labels)
    check_same_bits(providers, provider, tokens, labels)
    bench(lambda: sample(n), group=f"generate tokens {grammar_id(config)} n={n}", provider=provider, samples=n,
          nbytes=n * grammar.input_dim)


@pytest.mark.parametrize("provider", ["rhmfast", "per_level"])
@pytest.mark.parametrize("config", GRAMMARS, ids=grammar_id)
def test_generate_one_hot(bench, device, config, provider):
    grammar = rhmfast.RHM(*config)
    v, d = grammar.v, grammar.input_dim
    n = ONE_HOT_BYTES_PER_CALL // (4 * v * d)
    providers = token_providers(grammar, device)
    per_level = per_level_sampler(grammar, device, torch.int64)  # int64 straight into F.one_hot

    def rhmfast_one_hot():
        tokens, labels = grammar.sample(n, seed=SEED, device=device)
        return rhmfast.one_hot(tokens, v), labels

    def per_level_one_hot():
        tokens, labels = per_level(n)
        return F.one_hot(tokens, v).float().permute(0, 2, 1), labels

    fn = {"rhmfast": rhmfast_one_hot, "per_level": per_level_one_hot}[provider]
    x, labels = fn()
    assert x.shape == (n, v, d) and x.dtype == torch.float32
    assert ((x == 0) | (x == 1)).all() and (x.sum(1) == 1).all(), "not a one-hot encoding"
    tokens = x.argmax(1)
    check_derivation(grammar, tokens, labels)
    check_same_bits(providers, provider, tokens.to(torch.uint8), labels)
    bench(fn, group=f"generate one-hot {grammar_id(config)} n={n}", provider=provider, samples=n, nbytes=x.nbytes)
