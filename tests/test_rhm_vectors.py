"""The shipped test vectors of both reference codes (tests/data/*.json): rule tables, and tokens,
labels and latent trees of the given datum numbers (decimal strings), reproduced exactly; decode's
input forms; decoding beyond int64 with Python ints."""
from __future__ import annotations

import json
import pathlib

import pytest
import torch

import rhmfast
from rhmfast.reference import rhm_sample as ref

from conftest import INT64_LIMIT, TOKEN_DTYPES, digits_py, expand_py, parse_back

DATA = pathlib.Path(__file__).parent / "data"
V2024 = json.loads((DATA / "pcsl_rhm_vectors.json").read_text())["vectors"]
V2023 = json.loads((DATA / "pcsl_hierarchy_learning_vectors.json").read_text())["vectors"]


def grammar_2024(vec):
    c = vec["config"]
    return rhmfast.RHM(c["v"], c["m"], c["s"], c["L"], n_classes=c["n"], seed=c["seed"], rules="pcsl")


def grammar_2023(vec):
    c = vec["config"]
    return rhmfast.RHM(c["num_features"], c["m"], c["s"], c["num_layers"], n_classes=c["num_classes"],
                       seed=c["seed"], rules="pcsl-2023")


def ids(vectors):
    return ["-".join(f"{k}{v}" for k, v in vec["config"].items()) for vec in vectors]


def test_vector_files_are_nonempty():
    """Both files hold several configurations with indices, tokens and labels (2024 also trees)."""
    assert len(V2024) >= 5 and len(V2023) >= 5
    for vec in V2024 + V2023:
        assert len(vec["indices"]) == len(vec["tokens"]) == len(vec["labels"]) > 0
    assert all(len(vec["tree"]) == vec["config"]["L"] + 1 for vec in V2024)


@pytest.mark.parametrize("vec", V2024, ids=ids(V2024))
def test_pcsl_2024_vectors(vec):
    """pcsl: rule tables, pmax, tokens, labels and every latent-tree level equal the 2024 vectors."""
    g = grammar_2024(vec)
    assert g.pmax == int(vec["pmax"])
    assert [r.tolist() for r in g.rules] == vec["rules"]
    indices = [int(x) for x in vec["indices"]]
    tokens, labels, tree = g.decode(indices, return_tree=True)
    assert tokens.tolist() == vec["tokens"]
    assert labels.tolist() == vec["labels"]
    assert len(tree) == len(vec["tree"])
    for level, expected in enumerate(vec["tree"]):
        assert tree[level].tolist() == expected, f"tree level {level}"


@pytest.mark.parametrize("vec", V2023, ids=ids(V2023))
def test_pcsl_2023_vectors(vec):
    """pcsl-2023: rule tables (rows = occurring symbols), pmax, tokens and labels equal the 2023 vectors."""
    g = grammar_2023(vec)
    assert g.pmax == int(vec["pmax"])
    assert [r.tolist() for r in g.rules] == vec["rules"]
    indices = [int(x) for x in vec["indices"]]
    tokens, labels = g.decode(indices)
    assert tokens.tolist() == vec["tokens"]
    assert labels.tolist() == vec["labels"]
    # the tree agrees with the leaves: it parses back level by level
    _, _, tree = g.decode(indices, return_tree=True)
    levels, _ = parse_back(g, tokens)
    assert all(torch.equal(a.long(), b) for a, b in zip(tree, levels))


@pytest.mark.parametrize("vec", V2024 + V2023, ids=ids(V2024) + ids(V2023))
def test_decode_input_forms_agree(vec):
    """decode of an int64 tensor, of a list of ints, of single ints, through the kernel and the
    reference, in every dtype that fits: all the same samples."""
    g = grammar_2024(vec) if vec in V2024 else grammar_2023(vec)
    indices = [int(x) for x in vec["indices"]]
    assert g.pmax < INT64_LIMIT
    a = g.decode(torch.tensor(indices, dtype=torch.int64), return_tree=True)
    b = g.decode(indices, return_tree=True)
    for x, y in zip([a[0], a[1], *a[2]], [b[0], b[1], *b[2]]):
        assert torch.equal(x, y)
    single = g.decode(indices[1], return_tree=True)
    assert torch.equal(single[0][0], a[0][1]) and single[1].tolist() == [a[1][1].item()]
    r = ref.rhm_decode(g.table(), torch.tensor(indices), g.n_classes, a[0].dtype, True)
    assert torch.equal(r[0], a[0]) and torch.equal(r[1], a[1])
    for dtype in TOKEN_DTYPES:
        if max(g.v, g.n_classes) - 1 <= torch.iinfo(dtype).max:
            x, y = g.decode(indices, dtype=dtype)
            assert x.dtype == dtype and x.tolist() == a[0].tolist() and torch.equal(y, a[1])


def test_decode_empty_and_shapes():
    """decode of an empty list or tensor gives empty results of the right shapes."""
    g = grammar_2024(V2024[1])
    for empty in ([], torch.zeros(0, dtype=torch.int64)):
        tokens, labels, tree = g.decode(empty, return_tree=True)
        assert tokens.shape == (0, g.s**g.L) and labels.shape == (0,)
        assert [t.shape for t in tree] == [(0, g.s**level) for level in range(g.L + 1)]


def test_decode_matches_the_python_digit_expansion(rng):
    """decode follows label = i // (pmax/n_c), then base-m digits root first, breadth-first nodes."""
    for vec in V2024[:3] + V2023[:3]:
        g = grammar_2024(vec) if vec in V2024 else grammar_2023(vec)
        numbers = [rng.randrange(g.pmax) for _ in range(8)]
        tokens, labels, tree = g.decode(numbers, return_tree=True, dtype=torch.int64)
        for k, u in enumerate(numbers):
            label, digits = digits_py(g, u)
            assert labels[k].item() == label
            assert [lvl[k].tolist() for lvl in tree] == expand_py(g, label, digits)


@pytest.mark.parametrize("sampler", ["pcsl", "pcsl-2023", "first-token-uniform"])
def test_decode_beyond_int64_with_python_ints(sampler, rng):
    """A grammar with pmax >= 2^63 (here > 2^64) decodes Python ints of any size, including pmax - 1,
    exactly as a direct big-integer digit expansion says."""
    g = rhmfast.RHM(6, 3, 2, 6, seed=rng.randrange(1000), rules=sampler)  # pmax = 6 * 3^63
    assert g.pmax >= 1 << 64
    numbers = [0, g.pmax - 1, INT64_LIMIT, (1 << 64) + 12345] + [rng.randrange(g.pmax) for _ in range(6)]
    tokens, labels, tree = g.decode(numbers, return_tree=True, dtype=torch.int64)
    for k, u in enumerate(numbers):
        # direct expansion: strip the label, then the digits from the last node (least significant)
        n_internal = (g.s**g.L - 1) // (g.s - 1)
        per_class = g.m**n_internal
        label, rest = u // per_class, u % per_class
        digits = []
        for _ in range(n_internal):
            digits.insert(0, rest % g.m)
            rest //= g.m
        assert labels[k].item() == label
        levels = expand_py(g, label, digits)
        assert [lvl[k].tolist() for lvl in tree] == levels
        assert tokens[k].tolist() == levels[-1]
    with pytest.raises(ValueError, match="indices"):
        g.decode([g.pmax])
