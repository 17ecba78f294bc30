"""The RHM's variants: Zipf productions (their rule laws by chi-square tests, the documented counter layout
against a pure-Python model, the exact statistics against an enumeration and against sampled frequencies)
and the sparse RHM (its well-formed strings, their slots' law, parsing back to the dense sample and its
label); argument checks, save/load, and the noise probe of rhmfast.models.observables."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare

import rhmfast
from rhmfast.data import variants
from rhmfast.models.observables import noise_sensitivity, replace_and_expand, resample_below, synonymic_sensitivity

from conftest import MASK32, below_py, digits_py, expand_py, parse_back, philox_py, seed_key

P_MIN = 1e-4  # chi-square tests: fixed seeds, so each either passes or fails for good


def zipf_law(m: int, a: float) -> torch.Tensor:
    if math.isinf(a):
        return torch.tensor([1.0] + [0.0] * (m - 1), dtype=torch.float64)
    w = torch.tensor([(i + 1) ** -(1 + a) for i in range(m)], dtype=torch.float64)
    return w / w.sum()


def rule_indices(g: rhmfast.RHM, dense_tree: list[torch.Tensor], level: int) -> torch.Tensor:
    """The rule index chosen at every level-``level`` node [n, s^level] of dense latent trees."""
    parents = dense_tree[level].long().reshape(-1)
    patches = dense_tree[level + 1].long().reshape(-1, g.s)
    row_of = torch.full((max(g.v, g.n_classes),), -1, dtype=torch.int64)
    row_of[g.parents[level]] = torch.arange(g.parents[level].numel())
    match = (g.rules[level][row_of[parents]] == patches.unsqueeze(1)).all(-1)  # [N, m]
    assert bool((match.sum(1) == 1).all()), "every patch is exactly one rule of its parent"
    return match.long().argmax(1).reshape(dense_tree[level].shape)


def assert_chisquare(counts: torch.Tensor, probs: torch.Tensor, what) -> None:
    keep = probs > 0
    assert int(counts[~keep].sum()) == 0, (what, counts, probs)
    expected = probs[keep] * counts.sum()
    p = chisquare(counts[keep].double().numpy(), expected.numpy()).pvalue
    assert p > P_MIN, (what, counts.tolist(), expected.tolist(), p)


# ---- argument checks -----------------------------------------------------------------------------

BASE = dict(v=6, m=2, s=2, L=3)
ERRORS = [
    (dict(sparsity=-1), ValueError, r"rhmfast: sparsity must be >= 0, got -1"),
    (dict(sparsity=1.5), TypeError, r"rhmfast: sparsity must be an int, got float"),
    (dict(sparsity=True), TypeError, r"rhmfast: sparsity must be an int, got bool"),
    (dict(production="zipf", zipf_exponent=-0.5), ValueError, r"rhmfast: zipf_exponent must be >= 0 .*got -0.5"),
    (dict(production="zipf", zipf_exponent=math.nan), ValueError, r"rhmfast: zipf_exponent must be >= 0 .*got nan"),
    (dict(production="zipf", zipf_exponent=-math.inf), ValueError, r"rhmfast: zipf_exponent must be >= 0"),
    (dict(production="zipf", zipf_exponent="1"), TypeError, r"rhmfast: zipf_exponent must be a real number"),
    (dict(production="zipf", zipf_exponent=True), TypeError, r"rhmfast: zipf_exponent must be a real number"),
    (dict(production="zipf"), ValueError, r"rhmfast: zipf_exponent must be given with production='zipf'"),
    (dict(zipf_exponent=1.0), ValueError, r"rhmfast: zipf_exponent needs production='zipf'"),
    (dict(zipf_levels=[0]), ValueError, r"rhmfast: zipf_levels needs production='zipf'"),
    (dict(production="zipf", zipf_exponent=1, zipf_levels=[3]), ValueError,
     r"rhmfast: zipf_levels must be in \[0, 2\], got 3"),
    (dict(production="zipf", zipf_exponent=1, zipf_levels=[-1]), ValueError, r"rhmfast: zipf_levels must be in"),
    (dict(production="zipf", zipf_exponent=1, zipf_levels=[0.0]), TypeError, r"rhmfast: zipf_levels must be an int"),
    (dict(production="zipf", zipf_exponent=1, zipf_levels=[]), ValueError, r"rhmfast: zipf_levels must name at least"),
    (dict(production="zipf", zipf_exponent=1, zipf_levels=1), TypeError, r"rhmfast: zipf_levels must be None or"),
    (dict(production="zipf", zipf_exponent=1, zipf_levels="0"), TypeError, r"rhmfast: zipf_levels must be None or"),
    (dict(production="power"), ValueError, r"rhmfast: production must be one of \('uniform', 'zipf'\), got 'power'"),
    (dict(production=None), ValueError, r"rhmfast: production must be one of"),
]


@pytest.mark.parametrize("kwargs,error,match", ERRORS, ids=[f"{e.__name__}-{k}" for k, e, _ in ERRORS])
def test_constructor_rejects_bad_variant_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        rhmfast.RHM(**BASE, **kwargs)


def test_attributes_of_every_grammar():
    dense = rhmfast.RHM(6, 2, 2, 3, seed=1)
    assert (dense.input_dim, dense.input_vocab, dense.patch_size, dense.blank, dense.sparsity) == (8, 6, 2, None, 0)
    assert (dense.production, dense.zipf_exponent, dense.zipf_levels) == ("uniform", None, None)
    assert dense.rule_probs() is None
    sparse = rhmfast.RHM(6, 2, 2, 3, seed=1, sparsity=2, production="zipf", zipf_exponent=2, zipf_levels=(2, 0, 2))
    assert (sparse.input_dim, sparse.input_vocab, sparse.patch_size, sparse.blank) == (6**3, 7, 6, 6)
    assert sparse.zipf_exponent == 2.0 and type(sparse.zipf_exponent) is float and sparse.zipf_levels == (0, 2)
    assert sparse.pmax == dense.pmax  # the dense data: index mode's domain
    for a, b in zip(dense.rules + dense.parents, sparse.rules + sparse.parents):
        assert torch.equal(a, b)  # the variants share the rules
    assert repr(sparse) == ("RHM(v=6, m=2, s=2, L=3, n_classes=6, seed=1, rules='pcsl', production='zipf', "
                            "zipf_exponent=2.0, zipf_levels=(0, 2), sparsity=2)")
    inf = rhmfast.RHM(6, 2, 2, 3, production="zipf", zipf_exponent=math.inf)
    assert repr(inf).endswith("production='zipf', zipf_exponent=math.inf)")
    # the blank must fit the tokens' dtype: v = 256 sparse tokens need int16
    assert rhmfast.RHM(255, 2, 2, 1, sparsity=1).sample(2)[0].dtype == torch.uint8
    assert rhmfast.RHM(256, 2, 2, 1, sparsity=1).sample(2)[0].dtype == torch.int16


# ---- Zipf productions ----------------------------------------------------------------------------

def test_rule_probs_table():
    """float64 [L, R, m]: the Zipf law at the Zipf levels, 1/m elsewhere, zero rows for symbols owning no
    rules (pcsl-2023); cached per device."""
    g = rhmfast.RHM(8, 2, 2, 2, seed=0, rules="pcsl-2023", production="zipf", zipf_exponent=0.7, zipf_levels=[1])
    probs = g.rule_probs()
    assert probs.dtype == torch.float64 and probs.shape == (2, g.table().shape[1], 2)
    assert g.rule_probs("cpu") is probs
    for level in range(2):
        law = zipf_law(2, 0.7) if level == 1 else torch.full((2,), 1 / 2, dtype=torch.float64)
        owners = torch.zeros(probs.shape[1], dtype=torch.bool)
        owners[g.parents[level]] = True
        torch.testing.assert_close(probs[level][owners], law.expand(int(owners.sum()), 2), rtol=0, atol=1e-15)
        assert (probs[level][~owners] == 0).all()
    assert g.parents[1].numel() < g.v, "the test needs a symbol owning no rules"


@pytest.mark.parametrize("a,levels", [(0.5, [0, 2]), (0.0, None), (3.0, [1])])
def test_zipf_rule_frequencies(a, levels):
    """Rule i of a symbol is chosen with probability ∝ (i+1)^-(1+a) at the Zipf levels, uniformly elsewhere,
    and the label stays uniform (chi-square, fixed seeds)."""
    g = rhmfast.RHM(7, 4, 2, 3, seed=11, production="zipf", zipf_exponent=a, zipf_levels=levels)
    _, labels, tree = g.sample(6000, seed=21, return_tree=True)
    assert_chisquare(torch.bincount(labels, minlength=7), torch.full((7,), 1 / 7, dtype=torch.float64), "labels")
    for level in range(g.L):
        zipf = levels is None or level in levels
        law = zipf_law(4, a) if zipf else torch.full((4,), 0.25, dtype=torch.float64)
        assert_chisquare(torch.bincount(rule_indices(g, tree, level).reshape(-1), minlength=4), law, (level, zipf))


def test_infinite_exponent_always_takes_rule_zero():
    """a = inf: rule 0 at every Zipf level (uniform elsewhere); with every level Zipf an input is a function
    of its label."""
    g = rhmfast.RHM(6, 3, 2, 3, seed=2, production="zipf", zipf_exponent=math.inf, zipf_levels=[1])
    _, _, tree = g.sample(3000, seed=0, return_tree=True)
    assert (rule_indices(g, tree, 1) == 0).all()
    for level in (0, 2):
        assert_chisquare(torch.bincount(rule_indices(g, tree, level).reshape(-1), minlength=3),
                         torch.full((3,), 1 / 3, dtype=torch.float64), level)
    g = rhmfast.RHM(6, 3, 2, 3, seed=2, production="zipf", zipf_exponent=math.inf)
    x, y = g.sample(500, seed=4)
    assert x.unique(dim=0).shape[0] == y.unique().numel()
    table = g.table().long()
    expected = y.unsqueeze(1)
    for level in range(g.L):
        expected = table[level][expected, 0].flatten(1)
    assert torch.equal(x.long(), expected)


def test_zipf_matches_the_documented_counter_layout():
    """Labels and rule choices of Zipf samples, recomputed on Python ints from the layout documented in
    rhmfast.data.variants: lane 0 of block (0, i, 3) for the label, a 53-bit uniform from lanes 2(t%2), 2(t%2)+1
    of block (1 + t//2, i, 3) for node t, then the first rule whose cumulative probability exceeds it."""
    g = rhmfast.RHM(5, 3, 2, 3, n_classes=3, seed=9, production="zipf", zipf_exponent=0.3, zipf_levels=[0, 1])
    seed = (1 << 40) + 77
    key = seed_key(seed)
    cdf = variants.level_probabilities(g).cumsum(1)
    cdf[:, -1] = 1.0
    indices = [0, 1, 5, (1 << 33) + 3]
    for i in indices:
        def block(b, attempt=0, i=i):
            return philox_py((b, i & MASK32, i >> 32, 3 ^ (attempt << 8)), key)

        label = below_py(block(0)[0], g.n_classes, lambda attempt: block(0, attempt)[0])
        choices, node = [], 0
        for level in range(g.L):
            for _ in range(g.s**level):
                words = block(1 + node // 2)[2 * (node % 2):2 * (node % 2) + 2]
                u = ((words[0] >> 5) * (1 << 26) + (words[1] >> 6)) / 2.0**53
                choices.append(next(k for k in range(g.m) if float(cdf[level, k]) > u))
                node += 1
        x, y = g.sample(1, seed=seed, start=i)
        assert int(y) == label
        assert x[0].tolist() == expand_py(g, label, choices)[-1], i


@pytest.mark.parametrize("kwargs", [dict(production="zipf", zipf_exponent=1.3, zipf_levels=[0, 2]),
                                    dict(sparsity=2), dict(sparsity=1, production="zipf", zipf_exponent=0.0)],
                         ids=["zipf", "sparse", "zipf-sparse"])
def test_samples_are_counter_based(kwargs, monkeypatch):
    """Sample i depends only on (grammar, seed, i): slices of a larger draw, chunked batches, internal chunks
    of any size and every dtype give the same samples and trees."""
    g = rhmfast.RHM(5, 2, 2, 3, seed=4, **kwargs)
    x, y, tree = g.sample(60, seed=8, return_tree=True, dtype=torch.int64)
    part = g.sample(25, seed=8, start=20, return_tree=True, dtype=torch.int64)
    assert torch.equal(part[0], x[20:45]) and torch.equal(part[1], y[20:45])
    assert all(torch.equal(a, b[20:45]) for a, b in zip(part[2], tree))
    stream = g.batches(7, seed=8, dtype=torch.int64)
    batches = [next(stream) for _ in range(9)]
    assert torch.equal(torch.cat([b[0] for b in batches])[:60], x)
    assert torch.equal(torch.cat([b[1] for b in batches])[:60], y)
    monkeypatch.setattr(variants, "_CHUNK_ELEMENTS", 1)  # one sample per chunk
    again = g.sample(60, seed=8, return_tree=True, dtype=torch.int16)
    assert torch.equal(again[0].long(), x) and torch.equal(again[1], y)
    assert all(torch.equal(a.long(), b) for a, b in zip(again[2], tree))
    assert not torch.equal(g.sample(60, seed=9)[0].long(), x)
    assert g.sample(0, seed=8)[0].shape == (0, g.input_dim)


def test_index_mode_refuses_zipf_productions():
    g = rhmfast.RHM(5, 2, 2, 2, production="zipf", zipf_exponent=1.0)
    message = r"rhmfast: Zipf productions are not uniform: mode='index' .* use mode='iid'"
    with pytest.raises(ValueError, match=message):
        g.sample(4, mode="index")
    with pytest.raises(ValueError, match=message):
        g.batches(4, mode="index")
    with pytest.raises(ValueError, match=r"replacement=False.*Zipf productions are not; pass replacement=True"):
        g.split(10, 10)
    with pytest.raises(ValueError, match=r"order='pcsl'.*neither Zipf productions nor sparse inputs"):
        g.split(10, 10, order="pcsl", replacement=True)
    (x_train, y_train), (x_test, y_test) = g.split(30, 20, seed=3, replacement=True)
    x, y = g.sample(50, seed=3)
    assert torch.equal(torch.cat([x_train, x_test]), x) and torch.equal(torch.cat([y_train, y_test]), y)
    # decode() still decodes datum numbers through the rule table (not a draw from the Zipf law)
    uniform = rhmfast.RHM(5, 2, 2, 2)
    assert torch.equal(g.decode([0, 17, 39])[0], uniform.decode([0, 17, 39])[0])


def zipf_enumeration(g: rhmfast.RHM):
    """Every datum of a small Zipf grammar with its exact probability: (tree levels, probabilities [pmax])."""
    _, labels, tree = g.decode(torch.arange(g.pmax), return_tree=True, dtype=torch.int64)
    law = variants.level_probabilities(g)
    probs = []
    for datum in range(g.pmax):
        _, digits = digits_py(g, datum)
        p, node = 1.0 / g.n_classes, 0
        for level in range(g.L):
            for _ in range(g.s**level):
                p *= float(law[level, digits[node]])
                node += 1
        probs.append(p)
    return labels, tree, torch.tensor(probs, dtype=torch.float64)


def test_exact_statistics_weight_the_rules():
    """transition, first_symbol_law and label_posterior of a Zipf grammar equal the laws of the enumeration
    of all its data weighted by their probabilities."""
    g = rhmfast.RHM(4, 3, 2, 2, n_classes=3, seed=6, production="zipf", zipf_exponent=0.8, zipf_levels=[1])
    labels, tree, probs = zipf_enumeration(g)
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-12)
    for level in range(g.L):
        law = variants.level_probabilities(g)[level]
        expected = torch.zeros(g.exact.n_symbols(level), g.v, dtype=torch.float64)
        for row, symbol in enumerate(g.parents[level].tolist()):
            for c in range(g.m):
                expected[symbol, g.rules[level][row, c, 0]] += law[c]
        torch.testing.assert_close(g.exact.transition(level), expected, rtol=0, atol=1e-15)
    for level in range(g.L + 1):
        joint = torch.zeros(g.n_classes, g.exact.n_symbols(level), dtype=torch.float64)
        joint.index_put_((labels, tree[level][:, 0]), probs, accumulate=True)
        torch.testing.assert_close(g.exact.first_symbol_law(level), joint, rtol=0, atol=1e-12)
    for level in range(1, g.L + 1):
        q = g.exact.label_posterior(level)
        parent = tree[level - 1][:, 0]
        for row, symbol in enumerate(g.parents[level - 1].tolist()):
            here = parent == symbol
            if float(probs[here].sum()) == 0:
                assert q[row].isnan().all()
                continue
            freq = torch.zeros(g.n_classes, dtype=torch.float64).index_add_(0, labels[here], probs[here])
            torch.testing.assert_close(q[row], (freq / freq.sum()).expand(g.m, -1), rtol=0, atol=1e-12)


def test_exact_statistics_match_monte_carlo():
    """The first-symbol law of every level and the label posteriors of the first patches match the
    frequencies of 40000 Zipf samples within 5 binomial standard deviations (fixed seed)."""
    g = rhmfast.RHM(5, 3, 2, 4, seed=13, production="zipf", zipf_exponent=0.5)
    n = 40000
    _, labels, tree = g.sample(n, seed=13, return_tree=True, dtype=torch.int64)
    for level in range(g.L + 1):
        law = g.exact.first_symbol_law(level)
        counts = torch.zeros_like(law).index_put_((labels, tree[level][:, 0]), torch.ones(n, dtype=torch.float64),
                                                  accumulate=True)
        tol = 5 * torch.sqrt(law * (1 - law) / n) + 1e-9
        assert ((counts / n - law).abs() <= tol).all(), level
    checked = 0
    for level in range(1, g.L + 1):
        q = g.exact.label_posterior(level)[:, 0]
        row_of = torch.full((g.v,), -1, dtype=torch.int64)
        row_of[g.parents[level - 1]] = torch.arange(g.parents[level - 1].numel())
        rows = row_of[tree[level - 1][:, 0]] if level > 1 else tree[0][:, 0]
        for row in rows.unique().tolist():
            here = rows == row
            count = int(here.sum())
            if count < 300:
                continue
            freq = torch.bincount(labels[here], minlength=g.n_classes).double() / count
            tol = 5 * torch.sqrt(q[row] * (1 - q[row]) / count) + 1e-9
            assert ((freq - q[row]).abs() <= tol).all(), (level, row)
            checked += 1
    assert checked >= 10


def test_assumption_check_counts_rules_that_never_occur():
    """With a = inf the rules 1 .. m-1 never occur: part (a) of Assumption 6 fails, kappa is infinite; with a
    finite exponent kappa uses the least likely rule."""
    uniform = rhmfast.RHM(6, 3, 2, 2, seed=3)
    never = rhmfast.RHM(6, 3, 2, 2, seed=3, production="zipf", zipf_exponent=math.inf, zipf_levels=[1])
    for u, z in zip(uniform.exact.assumption_check(), never.exact.assumption_check()):
        if z["level"] == 2:  # the patches of level 2 are the rules of level 1
            assert z["never_first"] == u["never_first"] + (6 * 3 - u["never_first"]) // 3 * 2
            assert z["kappa"] == math.inf
        else:
            assert z == u
    assert not never.exact.satisfies_assumption()
    finite = rhmfast.RHM(6, 3, 2, 2, seed=3, production="zipf", zipf_exponent=1.0, zipf_levels=[1])
    u, z = uniform.exact.assumption_check()[1], finite.exact.assumption_check()[1]
    if u["never_first"] == 0:
        assert z["kappa"] == pytest.approx(u["kappa"] / (3 * float(zipf_law(3, 1.0).min())), rel=1e-12)


# ---- persistence ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(production="zipf", zipf_exponent=math.inf, zipf_levels=[0, 2]),
                                    dict(production="zipf", zipf_exponent=0.25, sparsity=3), dict(sparsity=1)],
                         ids=["zipf-inf", "zipf-sparse", "sparse"])
def test_save_load_round_trip(kwargs, tmp_path):
    g = rhmfast.RHM(5, 2, 2, 3, seed=7, **kwargs)
    path = tmp_path / "g.json"
    g.save(path)
    record = json.loads(path.read_text())
    if math.isinf(kwargs.get("zipf_exponent", 0)):
        assert record["zipf_exponent"] == "inf"
    h = rhmfast.RHM.load(path)
    for attr in ("production", "zipf_exponent", "zipf_levels", "sparsity", "input_dim", "input_vocab", "blank"):
        assert getattr(h, attr) == getattr(g, attr), attr
    assert repr(h) == repr(g)
    x, y, tree = g.sample(30, seed=2, return_tree=True)
    x2, y2, tree2 = h.sample(30, seed=2, return_tree=True)
    assert torch.equal(x, x2) and torch.equal(y, y2) and all(map(torch.equal, tree, tree2))


def test_files_without_the_variant_fields_load_as_uniform_and_dense(tmp_path):
    g = rhmfast.RHM(5, 2, 2, 3, seed=7)
    path = tmp_path / "g.json"
    g.save(path)
    record = json.loads(path.read_text())
    assert (record["production"], record["zipf_exponent"], record["zipf_levels"], record["sparsity"]) == \
        ("uniform", None, None, 0)
    for key in ("production", "zipf_exponent", "zipf_levels", "sparsity"):
        record.pop(key)
    path.write_text(json.dumps(record))
    h = rhmfast.RHM.load(path)
    assert (h.production, h.sparsity, h.input_dim) == ("uniform", 0, 8)
    assert torch.equal(h.sample(20, seed=1, mode="index")[0], g.sample(20, seed=1, mode="index")[0])


LOAD_ERRORS = [
    (dict(production="power"), r"field 'production' must be one of \('uniform', 'zipf'\), got 'power'"),
    (dict(production="zipf"), r"field 'zipf_exponent' must be given with production='zipf'"),
    (dict(production="zipf", zipf_exponent=-1), r"field 'zipf_exponent' must be >= 0"),
    (dict(production="zipf", zipf_exponent="infinity"), r"field 'zipf_exponent' must be a real number"),
    (dict(zipf_exponent=1.0), r"field 'zipf_exponent' needs production='zipf'"),
    (dict(production="zipf", zipf_exponent=1, zipf_levels=[5]), r"field 'zipf_levels' must be in \[0, 2\], got 5"),
    (dict(production="zipf", zipf_exponent=1, zipf_levels="0"), r"field 'zipf_levels' must be null or a list"),
    (dict(production="zipf", zipf_exponent=1, zipf_levels=[True]), r"field 'zipf_levels' must be an int"),
    (dict(sparsity=-1), r"field 'sparsity' must be >= 0, got -1"),
    (dict(sparsity=1.5), r"field 'sparsity' must be an int"),
]


@pytest.mark.parametrize("change,match", LOAD_ERRORS, ids=[m.split("'")[1] + str(i) for i, (_, m) in
                                                           enumerate(LOAD_ERRORS)])
def test_load_checks_the_variant_fields(change, match, tmp_path):
    path = tmp_path / "g.json"
    rhmfast.RHM(5, 2, 2, 3, seed=7).save(path)
    record = json.loads(path.read_text())
    record.update(change)
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"rhmfast: grammar file .*g\.json: {match}"):
        rhmfast.RHM.load(path)


# ---- the sparse RHM ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["iid", "index"])
def test_sparse_strings_are_well_formed_and_parse_back(mode):
    """Shapes and ids; every child's block of s0+1 slots under an informative position holds exactly one
    informative token, all else is blank; dense_tokens gives back the dense grammar's sample of the same
    stream, whose parse and exact posterior are the label; the tree's levels are the sparse strings of the
    dense levels, each inside the patch of its parent."""
    g = rhmfast.RHM(6, 2, 3, 3, n_classes=4, seed=3, sparsity=2)
    dense = rhmfast.RHM(6, 2, 3, 3, n_classes=4, seed=3)
    S, n = 9, 200
    x, y, tree = g.sample(n, seed=5, mode=mode, return_tree=True)
    assert x.shape == (n, S**3) and x.dtype == torch.uint8 and int(x.max()) == g.blank == 6
    assert [t.shape[1] for t in tree] == [1, S, S**2, S**3] and torch.equal(tree[-1], x)
    present = x != g.blank
    assert (present.sum(1) == 27).all()  # s^L informative tokens, (s(s0+1))^L - s^L blanks
    blocks = present.view(n, -1, 3).sum(-1)  # the s0+1 = 3 slots of each child
    parent_present = (tree[2] != g.blank).repeat_interleave(3, dim=1)  # each level-2 position owns s blocks
    assert torch.equal(blocks, parent_present.long())
    x_dense, y_dense, tree_dense = dense.sample(n, seed=5, mode=mode, return_tree=True)
    assert torch.equal(g.dense_tokens(x), x_dense) and torch.equal(y, y_dense)
    for level in range(1, 3):
        assert torch.equal(variants.dense_strings(g, tree[level], level), tree_dense[level])
    levels, _ = parse_back(dense, g.dense_tokens(x))
    assert torch.equal(levels[0][:, 0], y)
    torch.testing.assert_close(g.posterior(g.dense_tokens(x)), F.one_hot(y, 4).double())
    torch.testing.assert_close(g.posterior(x), F.one_hot(y, 4).double())  # its own inputs, compacted
    # a sparse input's probability: its dense string's, times 1/(s0+1) for the slot of each of the
    # 3 + 9 + 27 non-root nodes
    torch.testing.assert_close(g.log_prob(x), dense.log_prob(x_dense) - 39 * math.log(3))
    with pytest.raises(ValueError, match=r"mask must have the dense strings' shape \[B, s\^L = 27\]"):
        g.posterior(x, torch.zeros(x.shape, dtype=torch.bool))
    # each level-(l+1) token lies in the patch of s(s0+1) positions below its parent's position
    for level in range(2):
        parents = (tree[level] != g.blank).nonzero()[:, 1].view(n, -1)
        children = (tree[level + 1] != g.blank).nonzero()[:, 1].view(n, -1, 3)
        assert torch.equal(children // S, parents.unsqueeze(-1).expand_as(children))
        assert torch.equal(children % S // 3, torch.arange(3).expand_as(children))  # child c in block c


def test_sparse_slots_are_uniform_and_independent():
    """The slot of every informative token within its block is uniform on [0, s0] at every level, and the
    slots of the s children of a node are independent (joint law uniform on [0, s0]^s); chi-square."""
    g = rhmfast.RHM(5, 2, 2, 3, seed=1, sparsity=3)
    n = 3000
    _, _, tree = g.sample(n, seed=6, return_tree=True)
    uniform = torch.full((4,), 0.25, dtype=torch.float64)
    for level in range(1, 4):
        offsets = (tree[level] != g.blank).nonzero()[:, 1]
        assert_chisquare(torch.bincount(offsets % 4, minlength=4), uniform, level)
    slots = ((tree[1] != g.blank).nonzero()[:, 1] % 4).view(n, 2)
    assert_chisquare(torch.bincount(slots[:, 0] * 4 + slots[:, 1], minlength=16),
                     torch.full((16,), 1 / 16, dtype=torch.float64), "joint")


def test_sparse_slots_follow_the_documented_counter_layout():
    """The slot of non-root node j of sample i is lane (j-1) % 4 of block ((j-1) // 4, i, 4) mapped to [0, s0]."""
    g = rhmfast.RHM(5, 2, 2, 2, seed=1, sparsity=2)
    key = seed_key(31)
    for i in (0, 9, (1 << 32) + 1):
        _, _, tree = g.sample(1, seed=31, start=i, return_tree=True)
        found = [int(p) % 3 for level in (1, 2) for p in (tree[level][0] != g.blank).nonzero()[:, 0]]

        def word(j, attempt=0, i=i):
            return philox_py(((j - 1) // 4, i & MASK32, i >> 32, 4 ^ (attempt << 8)), key)[(j - 1) % 4]

        assert found == [below_py(word(j), 3, lambda a, j=j: word(j, a)) for j in range(1, 7)], i


def test_sparse_split_and_refusals():
    g = rhmfast.RHM(5, 2, 2, 3, seed=2, sparsity=1)
    (x_train, _), (x_test, _) = g.split(300, 200, seed=4)
    dense = torch.cat([g.dense_tokens(x_train), g.dense_tokens(x_test)])
    assert dense.unique(dim=0).shape[0] == 500  # index mode: distinct dense data, so disjoint sets
    with pytest.raises(ValueError, match=r"decode\(\) maps datum numbers to dense strings.*sparsity = 1"):
        g.decode([0])
    with pytest.raises(ValueError, match=r"label_hierarchy\(\) needs a dense grammar"):
        g.label_hierarchy()
    with pytest.raises(ValueError, match=r"order='pcsl'"):
        g.split(10, 10, order="pcsl")


def test_dense_tokens_rejects_strings_that_are_not_well_formed():
    g = rhmfast.RHM(5, 2, 2, 2, seed=2, sparsity=1)  # inputs of 16 tokens: 4 patches of 2 blocks of 2 slots
    x, _ = g.sample(4, seed=0, dtype=torch.int64)
    first = int((x[0] != 5).nonzero()[0])
    bad = x.clone()
    bad[0, first ^ 1] = 2  # a second informative token in a child's block
    with pytest.raises(ValueError, match=r"tokens\[0\] is not a well-formed sparse string: the patch of positions"):
        g.dense_tokens(bad)
    bad = x.clone()
    bad[1, (x[1] != 5).nonzero()[0]] = 5  # a child's block left blank
    with pytest.raises(ValueError, match=r"tokens\[1\] is not a well-formed"):
        g.dense_tokens(bad)
    bad = x.clone()
    empty = int((x[2].view(4, 4) == 5).all(1).nonzero()[0])  # a patch below a blank
    bad[2, 4 * empty] = 0
    with pytest.raises(ValueError, match=r"tokens\[2\] is not a well-formed"):
        g.dense_tokens(bad)
    with pytest.raises(ValueError, match=r"tokens\[3\] is not a well-formed sparse string: it holds only blanks"):
        g.dense_tokens(torch.cat([x[:3], torch.full((1, 16), 5)]))
    for value in (6, -1):
        bad = x.clone()
        bad[0, 0] = value
        with pytest.raises(ValueError, match=r"ids in \[0, v = 5\] \(v the blank\), got " + str(value)):
            g.dense_tokens(bad)
    with pytest.raises(ValueError, match=r"shape \[B, \(s\(s0\+1\)\)\^2 = 16\], got \[4, 8\]"):
        g.dense_tokens(x[:, :8])
    with pytest.raises(TypeError, match="integer tensor"):
        g.dense_tokens(x.float())
    dense = rhmfast.RHM(5, 2, 2, 2, seed=2)
    y, _ = dense.sample(3)
    assert dense.dense_tokens(y) is y
    with pytest.raises(ValueError, match=r"ids in \[0, v-1 = 4\], got 5"):
        dense.dense_tokens(torch.full((1, 4), 5))


# ---- the noise probe -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(), dict(rules="pcsl-2023"), dict(production="zipf", zipf_exponent=0.5)],
                         ids=["pcsl", "pcsl-2023", "zipf"])
def test_replace_and_expand_changes_one_symbol(kwargs):
    """Exactly one level-l symbol changes (to another symbol of the level), its subtree parses under the
    grammar, everything outside it is kept; at level L one token changes."""
    g = rhmfast.RHM(6, 3, 2, 3, seed=4, **kwargs)
    x, _, tree = g.sample(400, seed=1, return_tree=True)
    gen = torch.Generator().manual_seed(0)
    for level in range(g.L + 1):
        x_l = replace_and_expand(g, tree, level, gen)
        assert x_l.shape == x.shape and x_l.dtype == torch.int64
        levels, _ = parse_back(g, x_l)
        assert (levels[level] >= 0).all()  # the new symbol owns rules and was expanded by them
        changed = levels[level] != tree[level].long()
        assert (changed.sum(1) == 1).all(), level
        width = g.s ** (g.L - level)
        outside = ~changed.repeat_interleave(width, dim=1)
        assert torch.equal(x_l[outside], x.long()[outside])
        if 0 < level < g.L:
            assert torch.isin(levels[level][changed], g.parents[level]).all()


def test_replace_and_expand_draws_the_other_symbols_uniformly():
    g = rhmfast.RHM(7, 2, 2, 2, seed=0)
    x, _, tree = g.sample(3000, seed=2, return_tree=True)
    new = replace_and_expand(g, tree, g.L, torch.Generator().manual_seed(1))
    changed = new != x.long()
    assert (changed.sum(1) == 1).all()
    shift = (new[changed] - x.long()[changed]) % 7
    assert_chisquare(torch.bincount(shift, minlength=7), torch.tensor([0] + [1 / 6] * 6, dtype=torch.float64), "shift")
    positions = changed.long().argmax(1)
    assert_chisquare(torch.bincount(positions, minlength=4), torch.full((4,), 0.25, dtype=torch.float64), "node")


def test_fresh_rules_follow_the_zipf_law():
    """With a = inf at every level, an expansion takes rule 0 everywhere: the re-expanded inputs parse with
    rule 0 at every node below the replaced level, and resampling below a level gives the input back."""
    g = rhmfast.RHM(6, 3, 2, 3, seed=4, production="zipf", zipf_exponent=math.inf)
    x, _, tree = g.sample(200, seed=1, return_tree=True)
    gen = torch.Generator().manual_seed(0)
    for level in range(g.L):
        _, choices = parse_back(g, replace_and_expand(g, tree, level, gen))
        assert all((c == 0).all() for c in choices[level:]), level
        assert torch.equal(resample_below(g, tree[level], level, gen), x.long())


def test_replace_and_expand_keeps_the_slots_of_a_sparse_input():
    g = rhmfast.RHM(5, 2, 2, 3, seed=8, sparsity=2)
    dense = rhmfast.RHM(5, 2, 2, 3, seed=8)
    x, _, tree = g.sample(300, seed=3, return_tree=True)
    _, _, dense_tree = dense.sample(300, seed=3, return_tree=True)
    for level in range(g.L + 1):
        x_l = replace_and_expand(g, tree, level, torch.Generator().manual_seed(level))
        assert torch.equal(x_l != g.blank, x != g.blank)
        expected = replace_and_expand(dense, dense_tree, level, torch.Generator().manual_seed(level))
        assert torch.equal(g.dense_tokens(x_l), expected)


def test_replace_and_expand_rejects_bad_arguments():
    g = rhmfast.RHM(5, 2, 2, 2, n_classes=1, seed=0)
    _, _, tree = g.sample(10, return_tree=True)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"level must be in \[0, L = 2\], got 3"):
        replace_and_expand(g, tree, 3, gen)
    with pytest.raises(ValueError, match=r"level 0 has a single symbol"):
        replace_and_expand(g, tree, 0, gen)
    with pytest.raises(ValueError, match=r"tree must be a list of L \+ 1 = 3 levels"):
        replace_and_expand(g, tree[:2], 1, gen)
    bad = [t.clone() for t in tree]
    bad[1][0, 0] = 7
    with pytest.raises(ValueError, match=r"tree\[1\] holds symbols that do not belong to level 1"):
        replace_and_expand(g, bad, 1, gen)


class OneHotLevels(torch.nn.Module):
    """Two layers: the one-hot of the tokens of the dense strings, and of their parsed level-(L-1) symbols
    (an extra class for patches that do not parse)."""

    def __init__(self, g):
        super().__init__()
        self.g = g

    def layer_outputs(self, tokens):
        levels, _ = parse_back(self.g._dense_grammar(), self.g.dense_tokens(tokens))
        return [F.one_hot(levels[level] + 1, self.g.v + 1).double() for level in (self.g.L, self.g.L - 1)]


@pytest.mark.parametrize("sparsity", [0, 1])
def test_noise_sensitivity_exact_values(sparsity):
    """Noise at level L changes exactly one token and noise at level L-1 exactly one level-(L-1) symbol (a
    squared distance of 2 in the one-hot layers reading them), while synonymic exchanges below level L-1 do not
    move the second layer; the baseline is the mean squared distance to the independent inputs n..2n-1, as
    in synonymic_sensitivity. n_classes = 1: column 0 is NaN."""
    g = rhmfast.RHM(6, 2, 2, 3, n_classes=1, seed=5, sparsity=sparsity)
    model = OneHotLevels(g)
    n = 500
    N = noise_sensitivity(model, g, n=n, seed=2)
    assert N.shape == (2, g.L + 1) and N[:, 0].isnan().all() and (N[:, 1:] > 0).all()
    x, _ = g.sample(n, seed=2)
    y, _ = g.sample(n, seed=2, start=n)
    baseline = [(a - b).square().sum((1, 2)).mean().item() for a, b in zip(model.layer_outputs(x),
                                                                           model.layer_outputs(y))]
    assert N[0, g.L].item() == pytest.approx(2 / baseline[0], rel=1e-12)
    assert N[1, g.L - 1].item() == pytest.approx(2 / baseline[1], rel=1e-12)
    S = synonymic_sensitivity(model, g, n=n, seed=2)
    assert S[1, g.L - 1] == 0 and S[0, g.L - 1] > 0 and S[1, 0] > 0


@pytest.mark.cuda
def test_variants_sample_the_same_on_cuda():
    """The variants' samplers are torch code over counter-based words: the same bits on CUDA as on the CPU,
    and the noise probe with a CPU generator gives the same inputs."""
    g = rhmfast.RHM(6, 3, 2, 3, seed=1, sparsity=2, production="zipf", zipf_exponent=0.5, zipf_levels=[1])
    cpu = g.sample(300, seed=4, start=5, return_tree=True)
    cuda = g.sample(300, seed=4, start=5, return_tree=True, device="cuda")
    assert torch.equal(cpu[0], cuda[0].cpu()) and torch.equal(cpu[1], cuda[1].cpu())
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu[2], cuda[2]))
    assert torch.equal(g.rule_probs("cuda").cpu(), g.rule_probs())
    noised = [replace_and_expand(g, tree, 2, torch.Generator().manual_seed(0)) for tree in (cpu[2], cuda[2])]
    assert noised[1].device.type == "cuda" and torch.equal(noised[0], noised[1].cpu())
