"""The RHM grammar object: argument validation, the three rule samplers' laws and invariants, fast
construction of large grammars, the kernel rule table, and save/load."""
from __future__ import annotations

import itertools
import json
import random
import tracemalloc

import numpy as np
import pytest
import torch

import rhmfast
from rhmfast.reference import rhm_sample as ref

from conftest import INT64_LIMIT, SAMPLERS, random_grammar

# ---- validation ------------------------------------------------------------------------------

CONSTRUCTOR_ERRORS = [
    (dict(v=4, m=1, s=1, L=2), ValueError, r"\bs must be"),
    (dict(v=4, m=1, s=2, L=0), ValueError, r"\bL must be"),
    (dict(v=1, m=1, s=2, L=1), ValueError, r"\bv must be"),
    (dict(v=4, m=0, s=2, L=1), ValueError, r"\bm must be"),
    (dict(v=-3, m=1, s=2, L=1), ValueError, r"\bv must be"),
    (dict(v=4, m=1, s=2, L=1, n_classes=0), ValueError, r"n_classes must be"),
    (dict(v=4, m=1, s=2, L=1, seed=-1), ValueError, r"seed must be"),
    (dict(v=2, m=3, s=2, L=1, n_classes=2), ValueError, r"n_classes \* m"),
    (dict(v=3, m=2, s=2, L=2, n_classes=9), ValueError, r"n_classes \* m"),
    (dict(v=2, m=3, s=2, L=2, n_classes=1), ValueError, r"\bm must be <= v\^\(s-1\)"),
    (dict(v=3, m=4, s=2, L=3, n_classes=1, rules="first-token-uniform"), ValueError, r"\bm\b"),
    (dict(v=4, m=2, s=2, L=2, n_classes=3, rules="first-token-uniform"), ValueError, r"n_classes"),
    (dict(v=4, m=2, s=2, L=2, rules="pcsl-2024"), ValueError, r"rules must be one of"),
    (dict(v=4, m=2, s=2, L=2, rules=None), ValueError, r"rules must be one of"),
    (dict(v=4.0, m=2, s=2, L=2), TypeError, r"\bv must be an int"),
    (dict(v=4, m="2", s=2, L=2), TypeError, r"\bm must be an int"),
    (dict(v=4, m=2, s=2.5, L=2), TypeError, r"\bs must be an int"),
    (dict(v=4, m=2, s=2, L=True), TypeError, r"\bL must be an int"),
    (dict(v=4, m=2, s=2, L=2, n_classes=2.0), TypeError, r"n_classes must be an int"),
    (dict(v=4, m=2, s=2, L=2, seed=1.5), TypeError, r"seed must be an int"),
    (dict(v=257, m=2, s=3, L=2, rules="pcsl-2023"), ValueError, r"pcsl-2023"),  # v^s > 2^24
]


@pytest.mark.parametrize("kwargs,error,match", CONSTRUCTOR_ERRORS,
                         ids=[f"{e.__name__}-{m}" for _, e, m in CONSTRUCTOR_ERRORS])
def test_constructor_rejects_invalid_parameters(kwargs, error, match):
    """Each invalid constructor argument raises the documented error naming the parameter."""
    with pytest.raises(error, match=match):
        rhmfast.RHM(**kwargs)


def test_boundary_parameters_are_accepted():
    """The limits themselves are valid: n_classes*m == v^s (L = 1), m == v^(s-1), s = 2, v = 2, m = 1."""
    g = rhmfast.RHM(2, 2, 2, 1, n_classes=2)
    assert g.rules[0].reshape(-1, 2).unique(dim=0).shape[0] == 4
    g = rhmfast.RHM(3, 3, 2, 3, rules="first-token-uniform")
    assert g.pmax == 3 * 3**7
    g = rhmfast.RHM(2, 1, 2, 1, n_classes=1)
    assert g.pmax == 1


@pytest.fixture(scope="module")
def small():
    return rhmfast.RHM(8, 2, 2, 3, seed=1)  # pmax = 8 * 2^7 = 1024


@pytest.fixture(scope="module")
def huge():
    g = rhmfast.RHM(8, 4, 2, 6, seed=1)
    assert g.pmax >= INT64_LIMIT
    return g


SAMPLE_ERRORS = [
    (dict(n=-1), ValueError, r"\bn must be"),
    (dict(n=2.0), TypeError, r"\bn must be an int"),
    (dict(n=True), TypeError, r"\bn must be an int"),
    (dict(n=2, start=-1), ValueError, r"start must be"),
    (dict(n=2, start=1.0), TypeError, r"start must be an int"),
    (dict(n=2, seed=-1), ValueError, r"seed must be"),
    (dict(n=2, seed=1 << 64), ValueError, r"seed must be"),
    (dict(n=2, seed="1"), TypeError, r"seed must be an int"),
    (dict(n=2, mode="random"), ValueError, r"mode must be"),
    (dict(n=2, mode=None), ValueError, r"mode must be"),
    (dict(n=2, start=(1 << 63) - 1), ValueError, r"start \+ n"),
    (dict(n=2, dtype=torch.float32), TypeError, r"dtype must be"),
    (dict(n=2, dtype=torch.int8), TypeError, r"dtype must be"),
    (dict(n=1000, start=25, mode="index"), ValueError, r"pmax"),
    (dict(n=1025, mode="index"), ValueError, r"pmax"),
]


@pytest.mark.parametrize("kwargs,error,match", SAMPLE_ERRORS,
                         ids=[f"{e.__name__}-{m}" for _, e, m in SAMPLE_ERRORS])
def test_sample_rejects_invalid_arguments(small, kwargs, error, match):
    """RHM.sample validates sizes, offsets, seeds, modes, dtypes and the index-mode range."""
    kwargs = dict(kwargs)
    n = kwargs.pop("n")
    with pytest.raises(error, match=match):
        small.sample(n, **kwargs)


def test_index_mode_needs_pmax_below_2_63(huge):
    """Index mode (sample, batches) refuses grammars with pmax >= 2^63 and says to use iid."""
    with pytest.raises(ValueError, match=r"pmax.*iid"):
        huge.sample(1, mode="index")
    with pytest.raises(ValueError, match=r"pmax"):
        next(huge.batches(4, mode="index"))


@pytest.mark.parametrize("tree", [False, True])
def test_tokens_must_fit_dtype(tree):
    """v = 300 tokens do not fit uint8 (tokens and, with the tree, labels), named in the message;
    the default dtype is the smallest that fits."""
    g = rhmfast.RHM(300, 1, 2, 1)
    with pytest.raises(ValueError, match=r"dtype torch\.uint8"):
        g.sample(2, dtype=torch.uint8, return_tree=tree)
    with pytest.raises(ValueError, match=r"dtype torch\.uint8"):
        g.decode([0, 1], dtype=torch.uint8, return_tree=tree)
    assert g.sample(2, return_tree=tree)[0].dtype == torch.int16


def test_labels_must_fit_dtype_of_tree():
    """With n_classes > 256 and v <= 256, uint8 holds the tokens but not the tree's labels."""
    g = rhmfast.RHM(20, 1, 2, 1, n_classes=300)
    assert g.sample(3, dtype=torch.uint8)[0].dtype == torch.uint8
    assert g.sample(3)[0].dtype == torch.uint8
    with pytest.raises(ValueError, match="labels"):
        g.sample(3, dtype=torch.uint8, return_tree=True)
    assert g.sample(3, return_tree=True)[2][0].dtype == torch.int16


@pytest.mark.parametrize("call,error,match", [
    (lambda g: g.split(-1, 2), ValueError, r"n_train must be"),
    (lambda g: g.split(2, -1), ValueError, r"n_test must be"),
    (lambda g: g.split(2.0, 1), TypeError, r"n_train must be an int"),
    (lambda g: g.split(1000, 25), ValueError, r"n_train \+ n_test.*pmax"),
    (lambda g: next(g.batches(0)), ValueError, r"batch_size must be"),
    (lambda g: next(g.batches(2.5)), TypeError, r"batch_size must be an int"),
    (lambda g: g.decode(1024), ValueError, r"indices must be"),
    (lambda g: g.decode([3, -1]), ValueError, r"indices must be"),
    (lambda g: g.decode([1.5]), TypeError, r"indices must be an int"),
    (lambda g: g.decode(torch.tensor([1024])), ValueError, r"pmax"),
    (lambda g: g.decode(torch.tensor([-1])), ValueError, r"pmax"),
    (lambda g: g.decode(torch.tensor([1], dtype=torch.int32)), TypeError, r"int64"),
    (lambda g: g.decode([1], dtype=torch.float64), TypeError, r"dtype must be"),
    (lambda g: g.decode(True), TypeError, r"indices must be an int"),
    (lambda g: g.batches(4, mode="index", start=g.pmax), ValueError, r"start must be < pmax = 1024"),
    (lambda g: g.batches(4, mode="foo"), ValueError, r"mode must be"),
], ids=["n_train<0", "n_test<0", "n_train-float", "split>pmax", "batch0", "batch-float", "decode-pmax",
        "decode-neg", "decode-float", "decode-tensor-pmax", "decode-tensor-neg", "decode-int32", "decode-dtype",
        "decode-bool", "batches-past-pmax", "batches-mode"])
def test_split_batches_decode_reject_invalid_arguments(small, call, error, match):
    """split, batches and decode validate their arguments (kernel errors for tensors included)."""
    with pytest.raises(error, match=match):
        call(small)


def test_decode_accepts_numpy_integers(small):
    expected = small.decode([3, 5])
    for got in (small.decode([np.int64(3), np.int32(5)]), small.decode(np.array([3, 5]))):
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert all(torch.equal(a, b[:1]) for a, b in zip(small.decode(np.int64(3)), expected))


def test_decode_out_of_range_reference_errors(small):
    """The reference decoder rejects datum numbers outside [0, pmax) just like the kernel."""
    for bad in ([1024], [-1]):
        with pytest.raises(ValueError, match=r"pmax"):
            ref.rhm_decode(small.table(), torch.tensor(bad), small.n_classes, torch.uint8, False)
        with pytest.raises(ValueError, match=r"pmax"):
            torch.ops.rhmfast.rhm_decode(small.table(), torch.tensor(bad), small.n_classes, torch.uint8, False)


def test_huge_grammar_decode_of_tensor_and_split_limits(huge):
    """pmax >= 2^63: decoding an int64 tensor is refused (use Python ints); split beyond pmax too."""
    with pytest.raises(ValueError, match="Python ints"):
        huge.decode(torch.tensor([0]))
    with pytest.raises(ValueError, match="pmax"):
        rhmfast.RHM(2, 1, 2, 1, n_classes=2).split(2, 1)


# ---- direct errors of the C++ op ---------------------------------------------------------------

def _table():
    return rhmfast.RHM(8, 2, 2, 2, seed=0).table()  # entries 0 .. 7


def _poke(t, index, value):
    """t with its flat entry `index` set to `value`: one bad entry, at either end of the scan."""
    t = t.clone()
    t.view(-1)[index] = value
    return t


OP_ERRORS = [
    (lambda t: (t.long(), 8, 3, 0, 0, "iid", torch.uint8, False), TypeError, "rules must be int32"),
    (lambda t: (t.float(), 8, 3, 0, 0, "iid", torch.uint8, False), TypeError, "rules must be int32"),
    (lambda t: (t[0], 8, 3, 0, 0, "iid", torch.uint8, False), RuntimeError, r"shape \[L, R, m, s\]"),
    (lambda t: (t.transpose(2, 3), 8, 3, 0, 0, "iid", torch.uint8, False), RuntimeError, "contiguous"),
    (lambda t: (t - 1, 8, 3, 0, 0, "iid", torch.uint8, False), RuntimeError, r"rules entries must be in \[0, R=8\)"),
    (lambda t: (t + 8, 8, 3, 0, 0, "iid", torch.uint8, False), RuntimeError, r"rules entries must be in \[0, R=8\)"),
    (lambda t: (_poke(t, -1, 8), 8, 3, 0, 0, "iid", torch.uint8, False), RuntimeError, r"found values in \[0, 8\]"),
    (lambda t: (_poke(t, 0, -1), 8, 3, 0, 0, "iid", torch.uint8, False), RuntimeError, r"found values in \[-1, 7\]"),
    (lambda t: (torch.zeros(2, 8, 2, 1, dtype=torch.int32), 8, 1, 0, 0, "iid", torch.uint8, False),
     RuntimeError, r"s must be >= 2"),
    (lambda t: (torch.zeros(2, 8, 0, 2, dtype=torch.int32), 8, 1, 0, 0, "iid", torch.uint8, False),
     RuntimeError, r"m >= 1"),
    (lambda t: (t, 0, 3, 0, 0, "iid", torch.uint8, False), RuntimeError, "n_classes must be in"),
    (lambda t: (t, 9, 3, 0, 0, "iid", torch.uint8, False), RuntimeError, "n_classes must be in"),
    (lambda t: (t, 8, 3, 0, 0, "foo", torch.uint8, False), ValueError, "mode must be"),
    (lambda t: (t, 8, 3, 0, 0, "iid", torch.float32, False), TypeError, "dtype must be"),
    (lambda t: (t, 8, -1, 0, 0, "iid", torch.uint8, False), ValueError, r"\bn\b"),
    (lambda t: (t, 8, 1, 0, -1, "iid", torch.uint8, False), ValueError, "start must be"),
    (lambda t: (t, 8, 65, 0, 0, "index", torch.uint8, False), ValueError, "pmax = 64"),
    (lambda t: (torch.full((1, 300, 1, 2), 299, dtype=torch.int32), 300, 1, 0, 0, "iid", torch.uint8, False),
     RuntimeError, "do not fit dtype"),
    (lambda t: (torch.zeros(1, 300, 1, 2, dtype=torch.int32), 300, 1, 0, 0, "iid", torch.uint8, True),
     RuntimeError, "do not fit dtype"),
]


@pytest.mark.parametrize("make,error,match", OP_ERRORS, ids=[f"{e.__name__}-{m}" for _, e, m in OP_ERRORS])
def test_op_rejects_bad_inputs(make, error, match):
    """torch.ops.rhmfast.rhm_sample checks its rules tensor (dtype, shape, layout, values) and arguments
    with clear messages."""
    with pytest.raises(error, match=match):
        torch.ops.rhmfast.rhm_sample(*make(_table()))


# The reference accepts non-contiguous tables (it indexes with torch), so that case is the op's alone.
@pytest.mark.parametrize("make,error,match", [case for case in OP_ERRORS if case[2] != "contiguous"],
                         ids=[f"{e.__name__}-{m}" for _, e, m in OP_ERRORS if m != "contiguous"])
def test_reference_rejects_the_same_inputs(make, error, match):
    """The PyTorch reference rejects what the op rejects, with ValueError or TypeError and the same words."""
    with pytest.raises((ValueError, TypeError), match=match):
        ref.rhm_sample(*make(_table()))


@pytest.mark.parametrize("datum,error,match", [
    (torch.tensor([1], dtype=torch.int32), TypeError, "int64"),
    (torch.tensor([[1]]), RuntimeError, "1-D"),
    (torch.tensor([64]), ValueError, r"pmax = 64"),
])
def test_decode_op_rejects_bad_datum(datum, error, match):
    """torch.ops.rhmfast.rhm_decode rejects non-int64, non-1-D and out-of-range datum numbers."""
    with pytest.raises(error, match=match):
        torch.ops.rhmfast.rhm_decode(_table(), datum, 8, torch.uint8, False)
    with pytest.raises(ValueError):
        ref.rhm_decode(_table(), datum, 8, torch.uint8, False)


def test_decode_op_rejects_datum_on_another_device():
    with pytest.raises(ValueError, match="datum numbers must be on the rules' device cpu, got meta"):
        torch.ops.rhmfast.rhm_decode(_table(), torch.tensor([1, 2]).to("meta"), 8, torch.uint8, False)


def test_op_rejects_pmax_overflow():
    """Index mode and decoding through the op refuse tables whose pmax is >= 2^63."""
    t = rhmfast.RHM(8, 4, 2, 6, seed=0).table()
    with pytest.raises(ValueError, match="2\\^63"):
        torch.ops.rhmfast.rhm_sample(t, 8, 1, 0, 0, "index", torch.uint8, False)
    with pytest.raises(ValueError, match="2\\^63"):
        torch.ops.rhmfast.rhm_decode(t, torch.tensor([0]), 8, torch.uint8, False)


# ---- construction speed ------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    (256, 64, 2, 4),
    (256, 64, 2, 4, 256, 0, "first-token-uniform"),
    (64, 8, 4, 3),  # v^s = 2^24
    (256, 8, 4, 2),  # v^s = 2^32: enumerating the tuples could not even fit in memory
])
def test_large_grammars_never_enumerate_the_tuples(args):
    """Building a large grammar allocates memory for its rules, not for its v^s tuples: the Python heap's
    peak stays far below what a list or array of the tuples would take (128 MiB for 2^24 int64s)."""
    tracemalloc.start()
    try:
        g = rhmfast.RHM(*args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{g!r}: Python heap peak {peak / 2**20:.1f} MiB"
    assert g.rules[-1].shape == (g.v, g.m, g.s)


# ---- the samplers' laws and invariants ----------------------------------------------------------

def _tuples(v, s):
    return list(itertools.product(range(v), repeat=s))


def pcsl_model(v, n_classes, m, s, L, seed):
    """The 2024 reference library's 'pcsl' law: random.sample over all s-tuples in lexicographic order, one stream."""
    r = random.Random(seed)
    everything = _tuples(v, s)
    out = []
    for level in range(L):
        parents = n_classes if level == 0 else v
        chosen = r.sample(everything, parents * m)
        out.append([[list(chosen[p * m + c]) for c in range(m)] for p in range(parents)])
    return out


def pcsl_2023_model(v, n_classes, m, s, L, seed):
    """The 2023 reference code's 'pcsl-2023' law: per level shuffle all tuples, deal m per parent; parents = symbols of the
    level above, increasing."""
    r = random.Random(seed)
    parents = list(range(n_classes))
    out = []
    for _ in range(L):
        everything = _tuples(v, s)
        r.shuffle(everything)
        table = [[list(everything[p * m + c]) for c in range(m)] for p in range(len(parents))]
        out.append((parents, table))
        parents = sorted({x for rows in table for rule in rows for x in rule})
    return out


@pytest.mark.parametrize("trial", range(4))
def test_pcsl_follows_its_law(trial, rng):
    """'pcsl' rule tables equal random.sample over the enumerated tuples (the 2024 library's law)."""
    g = random_grammar(rng, "pcsl")
    expected = pcsl_model(g.v, g.n_classes, g.m, g.s, g.L, g.seed)
    assert [r.tolist() for r in g.rules] == expected
    assert [p.tolist() for p in g.parents] == [list(range(g.n_classes))] + [list(range(g.v))] * (g.L - 1)


@pytest.mark.parametrize("trial", range(4))
def test_pcsl_2023_follows_its_law(trial, rng):
    """'pcsl-2023' tables equal shuffling all tuples per level and dealing m per occurring parent."""
    g = random_grammar(rng, "pcsl-2023")
    expected = pcsl_2023_model(g.v, g.n_classes, g.m, g.s, g.L, g.seed)
    assert [p.tolist() for p in g.parents] == [p for p, _ in expected]
    assert [r.tolist() for r in g.rules] == [t for _, t in expected]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_rule_tables_are_unambiguous_and_complete(sampler, rng):
    """Every level: [n_parents, m, s] int64 with entries in [0, v), no s-tuple used twice, parents
    distinct and in range; deterministic in the seed, different for another seed; the global random
    module's state is left alone."""
    for _ in range(5):
        g = random_grammar(rng, sampler)
        state = random.getstate()
        again = rhmfast.RHM(g.v, g.m, g.s, g.L, n_classes=g.n_classes, seed=g.seed, rules=sampler)
        assert random.getstate() == state
        assert len(g.rules) == len(g.parents) == g.L
        for level, (p, r) in enumerate(zip(g.parents, g.rules)):
            assert r.dtype == p.dtype == torch.int64
            assert r.shape == (p.numel(), g.m, g.s)
            assert r.min() >= 0 and r.max() < g.v
            assert r.reshape(-1, g.s).unique(dim=0).shape[0] == p.numel() * g.m, "ambiguous grammar"
            assert p.unique().numel() == p.numel()
            assert p.min() >= 0 and p.max() < (g.n_classes if level == 0 else g.v)
            assert torch.equal(again.rules[level], r) and torch.equal(again.parents[level], p)
        assert g.pmax == g.n_classes * g.m ** ((g.s**g.L - 1) // (g.s - 1))
        assert g.input_dim == g.s**g.L


def test_different_seeds_give_different_rules():
    """The rule seed matters for every sampler."""
    for sampler in SAMPLERS:
        a = rhmfast.RHM(6, 3, 2, 3, seed=1, rules=sampler)
        b = rhmfast.RHM(6, 3, 2, 3, seed=2, rules=sampler)
        assert any(not torch.equal(x, y) for x, y in zip(a.rules, b.rules)), sampler


def test_pcsl_2023_parents_are_the_symbols_of_the_level_above(rng):
    """pcsl-2023: the parents of level l+1 are exactly the symbols occurring in level l's rules."""
    for _ in range(5):
        g = random_grammar(rng, "pcsl-2023")
        assert torch.equal(g.parents[0], torch.arange(g.n_classes))
        for level in range(1, g.L):
            assert torch.equal(g.parents[level], g.rules[level - 1].unique())


def test_first_token_uniform_structure(rng):
    """first-token-uniform: at every level each symbol a starts exactly m patches, every symbol owns
    m rules, n_classes == v."""
    for _ in range(5):
        g = random_grammar(rng, "first-token-uniform")
        assert g.n_classes == g.v
        for r in g.rules:
            first = r[:, :, 0].reshape(-1)
            assert torch.equal(torch.bincount(first, minlength=g.v), torch.full((g.v,), g.m))


def test_rule_table_for_kernels():
    """table(): int32 [L, R, m, s], R = max(v, n_classes), rows of parents = rules, cached per device."""
    for g in (rhmfast.RHM(5, 2, 2, 3, n_classes=9, seed=3), rhmfast.RHM(8, 2, 2, 2, seed=0, rules="pcsl-2023")):
        t = g.table()
        assert t.dtype == torch.int32 and t.is_contiguous()
        assert t.shape == (g.L, max(g.v, g.n_classes), g.m, g.s)
        for level in range(g.L):
            assert torch.equal(t[level][g.parents[level]].long(), g.rules[level])
        assert g.table("cpu") is t
    assert "RHM(v=8, m=2, s=2, L=2, n_classes=8, seed=0, rules='pcsl-2023')" == repr(g)


# ---- save / load ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", SAMPLERS)
def test_save_load_round_trip(sampler, tmp_path, rng):
    """save then load gives the same parameters, parents, rules, table and samples; for pcsl-2023 a
    grammar with fewer parent rows than v is included."""
    grammars = [random_grammar(rng, sampler) for _ in range(3)]
    if sampler == "pcsl-2023":
        short = rhmfast.RHM(8, 2, 2, 2, seed=0, rules=sampler)
        assert short.rules[1].shape[0] < short.v
        grammars.append(short)
    for k, g in enumerate(grammars):
        path = tmp_path / f"g{k}.json"
        g.save(path)
        h = rhmfast.RHM.load(path)
        for attr in ("v", "m", "s", "L", "n_classes", "seed", "sampler", "pmax", "input_dim"):
            assert getattr(h, attr) == getattr(g, attr), attr
        for a, b in zip(g.rules + g.parents, h.rules + h.parents):
            assert a.dtype == b.dtype and torch.equal(a, b)
        assert torch.equal(g.table(), h.table())
        x, y = g.sample(20, seed=7)
        x2, y2 = h.sample(20, seed=7)
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert list(tmp_path.glob("*.tmp*")) == []
    # str paths work too
    g.save(str(tmp_path / "s.json"))
    assert torch.equal(rhmfast.RHM.load(str(tmp_path / "s.json")).table(), g.table())


@pytest.mark.parametrize("change,match", [
    (lambda r: r.update(format="something-else"), "format"),
    (lambda r: r.pop("format"), "format"),
    (lambda r: r.update(version=2), "version"),
    (lambda r: r.pop("version"), "version"),
    (lambda r: r.update(rules=r["rules"][:1], parents=r["parents"][:1]), "levels"),
])
def test_load_rejects_wrong_format(change, match, tmp_path):
    """load refuses files of another format, another version, or with missing levels."""
    path = tmp_path / "g.json"
    rhmfast.RHM(4, 2, 2, 2, seed=1).save(path)
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=match):
        rhmfast.RHM.load(path)
