"""RHM.split(order="pcsl"): the training and test sets of the 2024 pcsl-epfl random-hierarchy-model library.

The library (datasets/random_hierarchy_model.py) draws, without replacement, ``random.seed(seed_sample)``
then ``random.sample(range(max_data), train_size + test_size)``, decodes those datum numbers and takes the
first train_size for training; with replacement (``--replacement``, or by itself when max_data > 1e19) a
``torch.Generator`` seeded with seed_sample draws the labels with ``torch.randint`` and then, level by level,
the rule of every node. The tests transcribe those draws; where the library's source is at hand (the
mirror) its dataset class is also imported and compared with directly."""
from __future__ import annotations

import importlib
import os
import random
import subprocess
import sys
import warnings

import pytest
import torch

from rhmfast import RHM

MIRROR = "/work/.mirror/pcsl-epfl+random-hierarchy-model/repo"

# (v, n_classes, m, s, L, rules seed, sample seed, P, P_test)
GRAMMARS = [(8, 8, 2, 2, 3, 0, 1, 100, 50), (16, 4, 4, 2, 4, 1, 2, 1000, 300), (5, 3, 3, 3, 2, 2, 5, 40, 20),
            (32, 32, 8, 2, 3, 3, 0, 2000, 500)]


def library_indices(pmax: int, total: int, seed_sample: int) -> list[int]:
    """The library's draw without replacement, as it does it (on the global stream, restored after)."""
    state = random.getstate()
    try:
        random.seed(seed_sample)
        return random.sample(range(pmax), total)
    finally:
        random.setstate(state)


def library_with_replacement(g: RHM, total: int, seed_sample: int):
    """The library's draw with replacement: labels, then each level's rule choices, from one torch.Generator."""
    gen = torch.Generator()
    gen.manual_seed(seed_sample)
    labels = torch.randint(low=0, high=g.n_classes, size=(total,), generator=gen)
    x = labels
    for level in range(g.L):
        chosen = torch.randint(low=0, high=g.rules[level].shape[1], size=x.shape, generator=gen)
        x = g.rules[level][x, chosen].flatten(start_dim=1)
    return x, labels


@pytest.mark.parametrize("v, n, m, s, L, seed_rules, seed_sample, P, P_test", GRAMMARS)
def test_pcsl_order_draws_the_library_sets_without_replacement(v, n, m, s, L, seed_rules, seed_sample, P, P_test):
    g = RHM(v, m, s, L, n_classes=n, seed=seed_rules)
    datum = library_indices(g.pmax, P + P_test, seed_sample)
    x, y = g.decode(datum)
    before = random.getstate()
    (x_train, y_train), (x_test, y_test) = g.split(P, P_test, seed=seed_sample, order="pcsl")
    assert random.getstate() == before  # Python's global stream is left alone
    assert torch.equal(x_train, x[:P]) and torch.equal(y_train, y[:P])
    assert torch.equal(x_test, x[P:]) and torch.equal(y_test, y[P:])
    assert len(set(datum)) == P + P_test  # distinct: the two sets are disjoint


@pytest.mark.parametrize("v, n, m, s, L, seed_rules, seed_sample, P, P_test", GRAMMARS)
def test_pcsl_order_draws_the_library_sets_with_replacement(v, n, m, s, L, seed_rules, seed_sample, P, P_test):
    g = RHM(v, m, s, L, n_classes=n, seed=seed_rules)
    x, y = library_with_replacement(g, P + P_test, seed_sample)
    (x_train, y_train), (x_test, y_test) = g.split(P, P_test, seed=seed_sample, order="pcsl", replacement=True)
    assert torch.equal(x_train.long(), x[:P]) and torch.equal(y_train, y[:P])
    assert torch.equal(x_test.long(), x[P:]) and torch.equal(y_test, y[P:])


@pytest.mark.parametrize("replacement", [False, True])
def test_pcsl_shards_trees_and_dtypes_agree_with_the_whole_split(replacement):
    g = RHM(8, 2, 2, 3, seed=4)
    whole = g.split(50, 13, seed=3, order="pcsl", replacement=replacement)
    parts = [g.split(50, 13, seed=3, order="pcsl", replacement=replacement, shard=(r, 3)) for r in range(3)]
    for which in (0, 1):
        for k in (0, 1):
            assert torch.equal(torch.cat([p[which][k] for p in parts]), whole[which][k])
    (x, y, tree), _ = g.split(50, 13, seed=3, order="pcsl", replacement=replacement, return_tree=True)
    assert torch.equal(x, whole[0][0]) and torch.equal(y, whole[0][1])
    assert [t.shape[1] for t in tree] == [1, 2, 4, 8] and torch.equal(tree[-1], x)
    assert torch.equal(tree[0][:, 0].long(), y)
    for level in range(g.L):  # each level expands the one above by the rules
        parents, children = tree[level].long(), tree[level + 1].long().reshape(len(y), -1, g.s)
        rules = g.rules[level][parents]  # [n, nodes, m, s]
        assert bool((rules == children[:, :, None, :]).all(-1).any(-1).all())
    (_, _, tree), (x_empty, _, _) = g.split(3, 1, order="pcsl", replacement=replacement, shard=(0, 3), return_tree=True)
    assert x_empty.shape == (0, 8) and [t.shape for t in tree] == [(1, 1), (1, 2), (1, 4), (1, 8)]
    (x32, _), _ = g.split(50, 13, seed=3, order="pcsl", replacement=replacement, dtype=torch.int32)
    assert x32.dtype == torch.int32 and torch.equal(x32.long(), whole[0][0].long())


def test_the_default_order_is_unchanged_and_replacement_is_the_iid_stream():
    g = RHM(8, 2, 2, 3, seed=0)
    (x_train, y_train), (x_test, _) = g.split(30, 10, seed=5)
    assert torch.equal(x_train, g.sample(30, seed=5, mode="index")[0])
    assert torch.equal(x_test, g.sample(10, seed=5, start=30, mode="index")[0])
    assert torch.equal(g.split(30, 10, seed=5, order="rhmfast")[0][1], y_train)
    (xr, _), (xe, _) = g.split(30, 10, seed=5, replacement=True)
    assert torch.equal(xr, g.sample(30, seed=5)[0]) and torch.equal(xe, g.sample(10, seed=5, start=30)[0])
    (xp, _), _ = g.split(30, 10, seed=5, order="pcsl")
    assert not torch.equal(xp, x_train)  # another draw


def test_pcsl_order_refusals_and_the_automatic_switch_to_replacement():
    g = RHM(8, 2, 2, 3)
    with pytest.raises(ValueError, match=r"order must be one of \('rhmfast', 'pcsl'\), got 'PCSL'"):
        g.split(5, 5, order="PCSL")
    with pytest.raises(TypeError, match="replacement must be a bool"):
        g.split(5, 5, order="pcsl", replacement=1)
    with pytest.raises(ValueError, match=r"n_train \+ n_test = 1100 exceeds pmax = 1024"):
        g.split(1000, 100, order="pcsl")
    (x, _), _ = g.split(1000, 100, order="pcsl", replacement=True)  # repeats allowed, as in the library
    assert x.shape == (1000, 8)
    at_2_63 = RHM(2, 2, 59, 2, n_classes=8)  # pmax = 8 * 2^60 = 2^63: the library's random.sample fails
    assert at_2_63.pmax == 2**63
    with pytest.raises(ValueError, match=r"needs pmax < 2\^63.*replacement=True"):
        at_2_63.split(4, 4, order="pcsl")
    huge = RHM(32, 8, 2, 5, seed=1)  # pmax = 32 * 8^31 > 1e19: the library samples with replacement
    with pytest.warns(RuntimeWarning, match="with replacement"):
        (x, y), (xt, yt) = huge.split(20, 7, seed=9, order="pcsl")
    lx, ly = library_with_replacement(huge, 27, 9)
    assert torch.equal(torch.cat([x, xt]).long(), lx) and torch.equal(torch.cat([y, yt]), ly)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        huge.split(20, 7, seed=9, order="pcsl", replacement=True)  # asked for: no warning


def test_pcsl_order_equals_the_library_recorded_sets():
    # The library's RandomHierarchyModel sets, recorded by tests/data/make_reference_2024_vectors.py.
    recorded = torch.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "reference_2024.pt"))
    assert len(recorded["split"]) == 6
    for entry in recorded["split"]:
        v, n, m, s, L, seed_rules, seed_sample, P, P_test = entry["case"]
        g = RHM(v, m, s, L, n_classes=n, seed=seed_rules)
        (x_train, y_train), (x_test, y_test) = g.split(P, P_test, seed=seed_sample, order="pcsl",
                                                       replacement=entry["replacement"])
        assert torch.equal(torch.cat([x_train, x_test]).long(), entry["tokens"].long()), entry["case"]
        assert torch.equal(torch.cat([y_train, y_test]).long(), entry["labels"].long()), entry["case"]


def _library_dataset_module(tmp_path):
    """The library's datasets package, read from the mirror with git show into tmp_path, imported under a
    name of its own (its modules import nothing but torch and numpy at import time)."""
    if not os.path.isdir(MIRROR):
        pytest.skip(f"no mirror of the library at {MIRROR}")
    package = tmp_path / "pcsl_library_datasets"
    package.mkdir()
    for name in ("__init__", "random_hierarchy_model", "utils"):
        try:
            text = subprocess.run(["git", "-C", MIRROR, "show", f"HEAD:datasets/{name}.py"], capture_output=True,
                                  text=True, check=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError) as error:
            pytest.skip(f"cannot read the library's datasets/{name}.py: {error}")
        (package / f"{name}.py").write_text(text)
    sys.path.insert(0, str(tmp_path))
    try:
        return importlib.import_module("pcsl_library_datasets")
    finally:
        sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("replacement", [False, True])
def test_pcsl_order_equals_the_library_dataset_class(tmp_path, replacement):
    library = _library_dataset_module(tmp_path)
    state = random.getstate()
    try:
        for v, n, m, s, L, seed_rules, seed_sample, P, P_test in GRAMMARS[:3]:
            dataset = library.RandomHierarchyModel(num_features=v, num_classes=n, num_synonyms=m, tuple_size=s,
                                                   num_layers=L, seed_rules=seed_rules, seed_sample=seed_sample,
                                                   train_size=P, test_size=P_test, input_format="long",
                                                   replacement=replacement)
            g = RHM(v, m, s, L, n_classes=n, seed=seed_rules)
            (x_train, y_train), (x_test, y_test) = g.split(P, P_test, seed=seed_sample, order="pcsl",
                                                           replacement=replacement)
            # input_format "long" holds the tokens plus one
            assert torch.equal(torch.cat([x_train, x_test]).long() + 1, dataset.features)
            assert torch.equal(torch.cat([y_train, y_test]), dataset.labels)
    finally:
        random.setstate(state)  # the library seeds the global stream
