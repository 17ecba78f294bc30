"""Daniely's label hierarchies (rhmfast.data.hierarchy): labels follow their gates and read only their
parents, the gates' laws, the input bits' addressing, determinism and chunk invariance, the circuit
teacher, and argument validation."""
from __future__ import annotations

import itertools

import pytest
import torch

import rhmfast
from rhmfast.data import CircuitTeacher, LabelHierarchy
from rhmfast.data import hierarchy as hierarchy_module


def cube(fan_in):
    """Argument values of the table entries: row t has +1 at the bits set in t."""
    return ((torch.arange(1 << fan_in)[:, None] >> torch.arange(fan_in)) & 1) * 2 - 1


def node_values(h, x):
    """Reference evaluation: every non-input node from its parents through its table, in node order of
    dependency (hidden gates of a circuit before the labels that read them)."""
    values = {c: x[:, c].long() for c in range(h.d)}
    order = []
    for layer in range(h.r):
        if isinstance(h, CircuitTeacher):
            order += h.gate_levels[layer].tolist()
        order += (h.levels[layer] + h.d).tolist()
    for node in order:
        parents = h.node_parents(node).tolist()
        entry = sum(((values[p] + 1) // 2) << k for k, p in enumerate(parents))
        values[node] = h.node_table(node).long()[entry]
    return values


def test_parity_tree_over_16_bits_computes_the_parity_of_all_inputs():
    h = LabelHierarchy(16, [8, 4, 2, 1], 2, gate="parity", wiring="tree")
    x, y = h.sample(4000, seed=3)
    assert torch.equal(y[:, -1].long(), x.long().prod(1))
    assert torch.equal(h.parents[:8], torch.arange(16).view(8, 2))
    assert torch.equal(h.parents[8:12], torch.arange(16, 24).view(4, 2))


@pytest.mark.parametrize("gate,fan_in", [("parity", 2), ("majority", 3), ("junta", 3), ("ptf", 2), ("ptf", 4)])
@pytest.mark.parametrize("wiring", ["random", "tree"])
def test_every_label_is_its_table_of_its_parents(gate, fan_in, wiring):
    h = LabelHierarchy(64, [16, 4, 1], fan_in, gate=gate, wiring=wiring, seed=5)
    x, y = h.sample(3000, seed=11, start=77)
    values = node_values(h, x)
    for j in range(h.n_labels):
        assert torch.equal(y[:, j].long(), values[h.d + j]), j


def test_flipping_a_non_parent_never_changes_a_label():
    """By enumeration: 4000 samples cover all 2^5 inputs; a label is a function of x, and flipping an input
    that is not among its parents leaves every level-1 label, and no other, unchanged."""
    h = LabelHierarchy(5, [3, 2, 1], 2, gate="junta", seed=2)
    x, y = h.sample(4000, seed=1)
    code = ((x.long() + 1) // 2 << torch.arange(5)).sum(1)
    label_of = {}
    for c, row in zip(code.tolist(), y.tolist()):
        assert label_of.setdefault(c, row) == row  # y is a function of x
    assert len(label_of) == 32
    for c, bit in itertools.product(range(32), range(5)):
        flipped = label_of[c ^ (1 << bit)]
        for j in range(3):  # level 1 reads the inputs
            if bit not in h.parents[j].tolist():
                assert flipped[j] == label_of[c][j]
    # levels above: equal parent values give equal labels over all inputs
    for j in range(3, h.n_labels):
        seen = {}
        for row in label_of.values():
            key = tuple(row[p - h.d] for p in h.parents[j].tolist())
            assert seen.setdefault(key, row[j]) == row[j]


def test_gates_agree_with_their_definitions():
    z = cube(5)
    parity = LabelHierarchy(10, [2], 5, gate="parity")
    assert torch.equal(parity.gate_table(1).long(), z.prod(1))
    majority = LabelHierarchy(10, [2], 5, gate="majority")
    assert torch.equal(majority.gate_table(0).long(), z.sum(1).sign())
    junta = LabelHierarchy(30, [40], 1, gate="junta", seed=4)
    tables = torch.stack([junta.gate_table(j) for j in range(40)]).long()
    assert set(map(tuple, tables.tolist())) == {(-1, 1), (1, -1)}  # balanced at fan_in 1: not constant
    for fan_in in (3, 6):
        junta = LabelHierarchy(30, [20], fan_in, gate="junta", seed=fan_in)
        assert all(junta.gate_table(j).double().mean().abs() <= 0.9 for j in range(20))


@pytest.mark.parametrize("fan_in", [1, 3, 5])
def test_ptf_gates_have_margin_one_on_the_whole_cube(fan_in):
    h = LabelHierarchy(20, [15, 6], fan_in, gate="ptf", seed=fan_in)
    z = cube(fan_in).double()
    masks = torch.arange(1 << fan_in)
    # monomial S at every argument value: product of the arguments in S
    monomials = torch.stack([z[:, [k for k in range(fan_in) if s >> k & 1]].prod(1) for s in masks.tolist()], 1)
    for j in range(h.n_labels):
        p = monomials @ h.node_polynomial(h.d + j)
        assert bool((p.abs() >= 1).all())
        assert torch.equal(p.sign().to(torch.int8), h.gate_table(j))
        assert h.gate_table(j).double().mean().abs() <= 0.9
    with pytest.raises(ValueError, match="not a 'ptf' gate"):
        LabelHierarchy(4, [1], 2).node_polynomial(4)


def test_inputs_follow_the_documented_philox_addressing():
    h = LabelHierarchy(200, [3], 2)
    seed = 0x1234_5678_9ABC
    x, _ = h.sample(50, seed=seed, start=290)
    for i, c in [(290, 0), (300, 5), (339, 199), (320, 130)]:
        counter = torch.tensor([[c, i // 128, 0, 2]])
        word = int(rhmfast.philox_uniform(counter, seed)[0, (i // 32) % 4])
        assert x[i - 290, c] == (1 if word >> (i % 32) & 1 else -1)


def test_inputs_are_uniform_and_labels_of_parity_and_majority_balanced():
    h = LabelHierarchy(100, [50, 10, 1], 3, gate="majority", seed=1)
    x, y = h.sample(10_000, seed=0)
    assert x.double().mean().abs() < 0.01  # 10^6 bits, fixed seed
    assert x.dtype == y.dtype == torch.int8
    assert set(x.unique().tolist()) == set(y.unique().tolist()) == {-1, 1}
    assert y.double().mean(0).abs().max() < 0.05


def test_chunking_and_seeds():
    h = LabelHierarchy(130, [40, 20, 5], 2, gate="junta", seed=9)
    x, y = h.sample(1000, seed=4, start=5)
    pieces = [h.sample(k, seed=4, start=5 + lo) for lo, k in [(0, 1), (1, 127), (128, 300), (428, 572)]]
    assert torch.equal(torch.cat([p[0] for p in pieces]), x)
    assert torch.equal(torch.cat([p[1] for p in pieces]), y)
    again = LabelHierarchy(130, [40, 20, 5], 2, gate="junta", seed=9)
    assert torch.equal(again.parents, h.parents)
    assert all(torch.equal(again.gate_table(j), h.gate_table(j)) for j in range(h.n_labels))
    assert all(torch.equal(a, b) for a, b in zip(again.sample(1000, seed=4, start=5), (x, y)))
    assert not torch.equal(h.sample(1000, seed=5, start=5)[0], x)
    assert not torch.equal(LabelHierarchy(130, [40, 20, 5], 2, gate="junta", seed=10).parents, h.parents)
    assert h.sample(0)[0].shape == (0, 130)


def test_structure_attributes():
    h = LabelHierarchy(30, [10, 4, 2], 3, gate="majority", seed=3)
    assert (h.d, h.n_labels, h.r) == (30, 16, 3)
    assert [level.tolist() for level in h.levels] == [list(range(10)), list(range(10, 14)), [14, 15]]
    assert h.parents.shape == (16, 3) and h.parents.dtype == torch.int64
    assert bool((h.parents[:10] < 30).all())
    assert bool(((h.parents[10:14] >= 30) & (h.parents[10:14] < 40)).all())
    assert all(len(set(row)) == 3 for row in h.parents.tolist())  # distinct parents
    assert h.gate_table(15).dtype == torch.int8 and h.gate_table(15).shape == (8,)


def test_circuit_teacher():
    t = CircuitTeacher(40, depth=3, width=24, fan_in=3, n_labels_per_layer=5, k=3, seed=1)
    assert isinstance(t, LabelHierarchy)
    assert (t.d, t.n_labels, t.r) == (40, 15, 3)
    assert [level.tolist() for level in t.levels] == [list(range(5 * i, 5 * i + 5)) for i in range(3)]
    assert t.parents.shape == (15, 3)
    for layer, level in enumerate(t.levels):  # labels read the hidden gates of their own layer
        gates = set(t.gate_levels[layer].tolist())
        assert all(p in gates for j in level.tolist() for p in t.parents[j].tolist())
    assert torch.equal(t.gate_table(0).long(), cube(3).sum(1).sign())
    x, y = t.sample(2000, seed=2, start=3)
    values = node_values(t, x)
    assert all(torch.equal(y[:, j].long(), values[t.d + j]) for j in range(t.n_labels))
    assert torch.equal(torch.cat([t.sample(500, seed=2, start=3)[1], t.sample(1500, seed=2, start=503)[1]]), y)
    ptf = CircuitTeacher(16, depth=2, width=8, fan_in=2, n_labels_per_layer=2, k=5, seed=0, gate="ptf")
    ptf.node_polynomial(int(ptf.gate_levels[1][0]))
    with pytest.raises(ValueError, match=r"\bk must be odd"):
        CircuitTeacher(16, depth=2, width=8, fan_in=3, n_labels_per_layer=2, k=4)
    with pytest.raises(ValueError, match=r"\bk must be in \[1, 8\]"):
        CircuitTeacher(16, depth=2, width=8, fan_in=3, n_labels_per_layer=2, k=9)


BAD = [
    (dict(d=0, level_sizes=[1], fan_in=1), ValueError, r"\bd must be"),
    (dict(d=3, level_sizes=[2], fan_in=4), ValueError, r"fan_in must be <= d = 3"),
    (dict(d=8, level_sizes=[4, 2, 1], fan_in=3), ValueError, r"fan_in must be <= level_sizes\[1\] = 2"),
    (dict(d=8, level_sizes=[], fan_in=1), ValueError, r"level_sizes must be a non-empty list"),
    (dict(d=8, level_sizes=8, fan_in=1), ValueError, r"level_sizes must be a non-empty list"),
    (dict(d=8, level_sizes=[4, 0], fan_in=1), ValueError, r"level_sizes\[1\] must be"),
    (dict(d=8, level_sizes=[4.0], fan_in=1), ValueError, r"level_sizes\[0\] must be"),
    (dict(d=8, level_sizes=[4], fan_in=2, gate="majority"), ValueError, r"fan_in must be odd"),
    (dict(d=8, level_sizes=[4], fan_in=2, gate="xor"), ValueError, r"gate must be one of"),
    (dict(d=8, level_sizes=[4], fan_in=2, wiring="grid"), ValueError, r"wiring must be one of"),
    (dict(d=8, level_sizes=[5], fan_in=2, wiring="tree"), ValueError, r"level_sizes\[0\] must be <= d // fan_in"),
    (dict(d=8, level_sizes=[4], fan_in=13), ValueError, r"fan_in must be in \[1, 12\]"),
    (dict(d=8, level_sizes=[4], fan_in="2"), TypeError, r"fan_in must be an int"),
    (dict(d=8, level_sizes=[4], fan_in=2, seed=-1), ValueError, r"seed must be in"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD)
def test_bad_parameters_name_themselves(kwargs, error, message):
    with pytest.raises(error, match=message):
        LabelHierarchy(**kwargs)


def test_bad_sample_arguments_and_unbalanceable_levels(monkeypatch):
    h = LabelHierarchy(8, [4], 2)
    with pytest.raises(ValueError, match=r"\bn must be >= 0"):
        h.sample(-1)
    with pytest.raises(TypeError, match=r"\bstart must be an int"):
        h.sample(3, start=1.0)
    with pytest.raises(ValueError, match=r"start \+ n must be < 2\^63"):
        h.sample(2, start=(1 << 63) - 1)
    with pytest.raises(ValueError, match=r"\bj must be in \[0, 3\]"):
        h.gate_table(4)
    monkeypatch.setattr(hierarchy_module, "MAX_DRAWS", 0)
    with pytest.raises(ValueError, match=r"level 1 \(gate='junta'\): no balanced gate"):
        LabelHierarchy(8, [50], 1, gate="junta")


def test_constant_labels_are_redrawn():
    # Seed 0's first wiring of this hierarchy makes every top label a parity whose inputs cancel (constant
    # +1, measured); the redraw gives balanced labels.
    h = LabelHierarchy(64, [4] * 6, 2, gate="parity", wiring="random", seed=0)
    _, y = h.sample(8192, seed=3)
    assert bool((y.double().mean(0).abs() < 0.1).all())


def test_unbalanceable_hierarchy_is_refused():
    with pytest.raises(ValueError, match="level_sizes"):
        LabelHierarchy(4, [2] * 6, 2, gate="parity", wiring="random", seed=0)
