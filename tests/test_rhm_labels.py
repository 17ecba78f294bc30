"""An RHM seen as a label hierarchy (rhmfast.data.rhm_labels, RHM.label_hierarchy)."""
import pytest
import torch

import rhmfast
from rhmfast.data import RHM, RHMLabels, rhm_labels
from rhmfast.models import ResidualLayerwiseNet
from rhmfast.train import train_residual_layerwise
from rhmfast.train.residual import hierarchy_config

GRAMMARS = {
    "tiny": dict(v=4, m=2, s=2, L=2, n_classes=4),
    "deep": dict(v=3, m=2, s=2, L=4, n_classes=2),
    "s3": dict(v=4, m=3, s=3, L=2, n_classes=5),
    "flat": dict(v=5, m=2, s=3, L=1, n_classes=3),
    "pcsl-2023": dict(v=6, m=2, s=2, L=3, n_classes=3, rules="pcsl-2023"),
}


@pytest.fixture(scope="module", params=list(GRAMMARS))
def grammar(request):
    return RHM(**GRAMMARS[request.param], seed=3)


def symbols(one_hot: torch.Tensor, width: int) -> torch.Tensor:
    """int64 [n, positions]: the symbol each position's +-1 one-hot block of ``width`` entries marks."""
    return one_hot.view(one_hot.shape[0], -1, width).argmax(-1)


def test_attributes(grammar):
    v, s, L, c = grammar.v, grammar.s, grammar.L, grammar.n_classes
    view = grammar.label_hierarchy()
    assert isinstance(view, RHMLabels) and view.grammar is grammar
    assert view.d == v * s**L and view.r == L and view.fan_in == v * s
    assert view.n_labels == v * sum(s**k for k in range(1, L)) + c
    assert [len(level) for level in view.levels] == [v * s**(L - i) for i in range(1, L)] + [c]
    assert torch.equal(torch.cat(view.levels), torch.arange(view.n_labels))
    assert view.parents.shape == (view.n_labels, v * s) and view.parents.dtype == torch.int64
    # every label reads nodes of the level just below it, inputs for level 1
    for i, level in enumerate(view.levels):
        lo, hi = (0, view.d) if i == 0 else (view.d + view.offsets[i - 1], view.d + view.offsets[i])
        assert bool(((view.parents[level] >= lo) & (view.parents[level] < hi)).all())
    assert torch.equal(view.node_parents(view.d + view.n_labels - 1), view.parents[-1])
    config = hierarchy_config(view)
    assert config["hierarchy"] == "RHMLabels" and config["gate"] == "rhm" and config["wiring"] == "tree"
    assert config["fan_in"] == v * s and config["seed_hierarchy"] == grammar.seed
    assert "RHMLabels(RHM(" in repr(view)


def test_one_hot_and_agrees_with_the_grammars_tree(grammar):
    v, L = grammar.v, grammar.L
    view = grammar.label_hierarchy()
    x, y = view.sample(300, seed=7, start=11)
    assert x.dtype == y.dtype == torch.int8 and x.shape == (300, view.d) and y.shape == (300, view.n_labels)
    assert bool(((x == 1) | (x == -1)).all()) and bool(((y == 1) | (y == -1)).all())
    # exactly one +1 per position: the leaves, each level below the root, and the root's class block
    assert bool(((x == 1).view(300, -1, v).sum(-1) == 1).all())
    for i in range(1, L + 1):
        block = y[:, view.offsets[i - 1]:view.offsets[i]]
        width = v if i < L else grammar.n_classes
        assert bool(((block == 1).view(300, -1, width).sum(-1) == 1).all())
    tokens, labels, tree = grammar.sample(300, seed=7, start=11, return_tree=True)
    assert torch.equal(symbols(x, v), tokens.long())
    # orientation: level i is tree level L - i, so level L is the root class
    assert torch.equal(symbols(y[:, view.offsets[L - 1]:], grammar.n_classes)[:, 0], labels)
    for i in range(1, L):
        assert torch.equal(symbols(y[:, view.offsets[i - 1]:view.offsets[i]], v), tree[L - i].long())


def test_latents_produce_their_children_by_the_rules(grammar):
    """Each latent symbol's s children (the level below, the leaves for level 1) are one of its m rules; the
    rule table's level 0 is the root's, so label level i uses table level L - i."""
    v, s, L = grammar.v, grammar.s, grammar.L
    view = grammar.label_hierarchy()
    x, y = view.sample(500, seed=1)
    table = grammar.table()  # int32 [L, symbols, m, s]
    below = symbols(x, v)
    for i in range(1, L + 1):
        width = v if i < L else grammar.n_classes
        above = symbols(y[:, view.offsets[i - 1]:view.offsets[i]], width)  # [n, s^(L-i)]
        children = below.view(500, -1, s)  # position p's children: p*s .. p*s + s - 1
        rules = table[L - i][above].long()  # [n, s^(L-i), m, s]
        assert bool((rules == children.unsqueeze(2)).all(-1).any(-1).all()), f"level {i}"
        below = above


def test_each_label_is_a_function_of_its_parents(grammar):
    view = grammar.label_hierarchy()
    x, y = view.sample(2000, seed=5)
    nodes = torch.cat([x, y], 1)
    arguments = (nodes[:, view.parents] > 0).long()  # [n, n_labels, fan_in]
    key = (arguments << torch.arange(view.fan_in)).sum(-1)  # fan_in <= 15 here: fits int64
    label = torch.arange(view.n_labels).expand_as(key)
    value = (y > 0).long()
    by_parents = torch.stack([label, key], -1).view(-1, 2).unique(dim=0)
    with_value = torch.stack([label, key, value], -1).view(-1, 3).unique(dim=0)
    assert len(with_value) == len(by_parents)  # no parent value seen with both label values


def test_any_chunking_gives_the_same_samples(monkeypatch):
    view = RHM(**GRAMMARS["tiny"], seed=0).label_hierarchy()
    x, y = view.sample(257, seed=9, start=100)
    parts = [view.sample(n, seed=9, start=start) for start, n in ((100, 1), (101, 127), (228, 129))]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    monkeypatch.setattr(rhm_labels, "_CHUNK", 10)  # the view's own passes over the grammar's sampler
    assert all(torch.equal(a, b) for a, b in zip(view.sample(257, seed=9, start=100), (x, y)))
    assert not torch.equal(view.sample(257, seed=10, start=100)[1], y)
    empty_x, empty_y = view.sample(0)
    assert empty_x.shape == (0, view.d) and empty_y.shape == (0, view.n_labels)


def test_bad_input():
    view = RHM(**GRAMMARS["tiny"]).label_hierarchy()
    for name, kwargs in (("n", dict(n=-1)), ("seed", dict(n=1, seed=-1)), ("start", dict(n=1, start=-1))):
        with pytest.raises(ValueError, match=name):
            view.sample(**kwargs)
    with pytest.raises(ValueError, match="node"):
        view.node_parents(0)  # an input: it reads nothing
    with pytest.raises(ValueError, match="grammar"):
        RHMLabels("not a grammar")


def test_exported():
    assert rhmfast.data.RHMLabels is RHMLabels


# The residual layerwise learner (width 1024, closed-form ridge, seed 0) on RHMs, measured on a 2-core CPU,
# top-level test error (mean over the root's one-hot labels of wrong signs: predicting all -1 scores
# 1/n_classes) against samples per stage:
#   tiny (v=4, m=2, s=2, L=2, 4 classes, pmax 32):  4: 0.33, 8: 0.29, 16: 0.24, 32: 0.008, 64: 0.0
#   v=8, m=4, s=2, L=2, 8 classes (pmax 512):      32: 0.21, 64: 0.17, 128: 0.089, 256: 0.023, 512: 0.001
# (and v=8, m=4, s=2, L=3: 0.19 at 512, 0.078 at 2048, 0.053 at 4096, 0.037 at 16384.)
@pytest.mark.parametrize("params, enough, too_few", [
    (dict(v=4, m=2, s=2, L=2, n_classes=4), 64, 8),
    (dict(v=8, m=4, s=2, L=2, n_classes=8), 512, 32),
])
def test_residual_layerwise_learns_the_rhm(params, enough, too_few):
    grammar = RHM(**params, seed=0)
    errors = {}
    for n in (enough, too_few):
        view = grammar.label_hierarchy()
        net = ResidualLayerwiseNet(view, width=1024, seed=0)
        errors[n] = train_residual_layerwise(net, view, n_per_stage=n, progress=False).final_test_error
    assert errors[enough] < 0.05
    assert errors[too_few] > 0.15
