"""Last-token prediction (``rhmfast.data.LastToken``): inputs, targets and context against the grammar's own
samples, the Bayes-optimal error against brute-force counting over every string of a tiny grammar, training
(train_sgd, online, replicas) and records, sweep configs (hashes, runs, packs), and P* with a floor."""
from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict

import matplotlib.axes
import numpy as np
import pytest
import torch

from rhmfast import RHM
from rhmfast.data import LastToken, make_task
from rhmfast.models import HierarchicalCNN
from rhmfast.studies import pstar_table, threshold
from rhmfast.studies.plots import plot_error_vs_p
from rhmfast.studies.report import write_tables
from rhmfast.studies.runs import (build_model, check_feasible, complete_config, config_hash, data_of, pack_key,
                                  run_config, run_pack)
from rhmfast.studies.store import ResultStore, load_rows, make_record
from rhmfast.train import train_sgd, train_sgd_replicas

GRAMMAR = dict(v=4, m=2, s=2, L=3)  # pmax = 4 * 2^7 = 512 strings of 8 leaves


@pytest.fixture(scope="module")
def grammar():
    return RHM(**GRAMMAR)


def test_inputs_hide_the_last_leaf_and_targets_are_it(grammar):
    task = LastToken(grammar)
    assert (task.v, task.s, task.L, task.input_dim, task.patch_size) == (4, 2, 3, 8, 2)
    assert (task.mask_id, task.input_vocab, task.n_classes, task.context) == (4, 5, 4, 8)
    for mode, start in (("iid", 0), ("index", 37)):
        x, y = task.sample(64, seed=3, start=start, mode=mode)
        raw, _ = grammar.sample(64, seed=3, start=start, mode=mode)
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape == (64, 8)
        assert torch.equal(y, raw[:, -1].long())
        assert torch.equal(x[:, :-1], raw[:, :-1]) and bool((x[:, -1] == 4).all())
    assert make_task(grammar, "classify") is grammar
    assert isinstance(make_task(grammar, "last-token", 3), LastToken)


def test_context_hides_every_leaf_before_the_window(grammar):
    raw, _ = grammar.sample(40, seed=1)
    for context, visible in ((3, [5, 6]), (1, []), (8, list(range(7)))):
        x, y = LastToken(grammar, context).sample(40, seed=1)
        shown = torch.zeros(8, dtype=torch.bool)
        shown[visible] = True
        assert torch.equal(x[:, shown], raw[:, shown]) and bool((x[:, ~shown] == 4).all())
        assert torch.equal(y, raw[:, -1].long())


def test_split_and_batches_use_the_grammars_sample_numbers(grammar):
    task = LastToken(grammar, context=5)
    (xa, ya), (xb, yb) = task.split(100, 30, seed=2)
    (ra, _), (rb, _) = grammar.split(100, 30, seed=2)
    assert torch.equal(ya, ra[:, -1].long()) and torch.equal(yb, rb[:, -1].long())
    assert torch.equal(xa[:, 3:7], ra[:, 3:7]) and torch.equal(xb[:, 3:7], rb[:, 3:7])
    (pa, _), _ = task.split(10, 5, seed=2, order="pcsl")
    (qa, _), _ = grammar.split(10, 5, seed=2, order="pcsl")
    assert torch.equal(pa[:, 3:7], qa[:, 3:7])
    stream = task.batches(16, seed=4, start=8)
    for k in range(2):
        x, y = next(stream)
        assert all(torch.equal(a, b) for a, b in zip((x, y), task.sample(16, seed=4, start=8 + 16 * k)))


def test_the_mask_id_sets_the_token_dtype():
    task = LastToken(RHM(256, 1, 2, 1))
    x, _ = task.sample(8, seed=0)
    assert task.mask_id == 256 and x.dtype == torch.int16 and bool((x[:, -1] == 256).all())
    with pytest.raises(ValueError, match="cannot hold the mask id 256"):
        task.sample(8, dtype=torch.uint8)
    assert task.sample(8, dtype=torch.int64)[0].dtype == torch.int64


def _brute_force(grammar, context):
    """Per string of the grammar (all pmax of them, equally likely), the counts of the last leaf's symbols among
    the strings that agree with it on the visible leaves."""
    tokens, _ = grammar.decode(range(grammar.pmax))
    d = grammar.input_dim
    visible = [tuple(row[d - context:d - 1]) for row in tokens.tolist()]
    counts = defaultdict(Counter)
    for key, last in zip(visible, tokens[:, -1].tolist()):
        counts[key][last] += 1
    return tokens, [counts[key] for key in visible]


@pytest.mark.parametrize("spec", [dict(GRAMMAR, context=8), dict(GRAMMAR, context=4), dict(GRAMMAR, context=1),
                                  dict(v=3, m=3, s=3, L=2, n_classes=2, rules="pcsl-2023", context=6)])
def test_bayes_error_equals_counting_every_string(spec):
    spec = dict(spec)
    context = spec.pop("context")
    grammar = RHM(**spec)
    task = LastToken(grammar, context)
    tokens, counts = _brute_force(grammar, context)
    x, y = tokens.masked_fill(task.hidden, task.mask_id), tokens[:, -1].long()
    posterior = task.target_posterior(x)
    expected = torch.tensor([[c[t] / sum(c.values()) for t in range(grammar.v)] for c in counts], dtype=torch.float64)
    assert torch.allclose(posterior, expected, rtol=0, atol=1e-12)
    errors = [1 - max(c.values()) / sum(c.values()) for c in counts]
    assert task.bayes_error(x) == pytest.approx(sum(errors) / len(errors), abs=1e-12)
    best = task.bayes_predictions(x)
    assert all(c[int(t)] == max(c.values()) for c, t in zip(counts, best))
    # the Bayes predictor's error on the strings themselves is the same number: every string is equally likely
    assert float((best != y).double().mean()) == pytest.approx(task.bayes_error(x), abs=1e-12)


def test_bayes_error_of_zipf_productions_weighs_every_string_by_its_law():
    """Zipf productions: string i has probability (1/n_c) * prod over its internal nodes of the chosen rule's
    probability at the node's level (datum digits: root first, then each level's nodes)."""
    grammar = RHM(**GRAMMAR, production="zipf", zipf_exponent=1.0, zipf_levels=[1, 2])
    law = torch.tensor([[0.5, 0.5], [0.8, 0.2], [0.8, 0.2]], dtype=torch.float64)  # (1, 1/4) / 1.25 at levels 1, 2
    node_level = [0, 1, 1, 2, 2, 2, 2]
    per_class = grammar.pmax // grammar.n_classes
    weights = []
    for i in range(grammar.pmax):
        digits = [(i % per_class) // 2 ** (6 - t) % 2 for t in range(7)]
        weights.append(math.prod(float(law[level, d]) for level, d in zip(node_level, digits)) / grammar.n_classes)
    task = LastToken(grammar, context=4)
    tokens, _ = grammar.decode(range(grammar.pmax))
    joint = defaultdict(lambda: [0.0] * 4)
    for row, w in zip(tokens.tolist(), weights):
        joint[tuple(row[4:7])][row[-1]] += w
    expected = torch.tensor([[p / sum(joint[tuple(row[4:7])]) for p in joint[tuple(row[4:7])]]
                             for row in tokens.tolist()], dtype=torch.float64)
    posterior = task.target_posterior(tokens.masked_fill(task.hidden, task.mask_id))
    assert abs(sum(weights) - 1) < 1e-12 and torch.allclose(posterior, expected, rtol=0, atol=1e-12)
    x, _ = task.sample(200, seed=0)
    assert task.bayes_error(x) == pytest.approx(float((1 - task.target_posterior(x).max(1).values).mean()))


def test_bad_arguments_are_refused(grammar):
    with pytest.raises(ValueError, match="task must be one of"):
        make_task(grammar, "next-token")
    with pytest.raises(ValueError, match="context is an option of task 'last-token'"):
        make_task(grammar, "classify", 4)
    with pytest.raises(ValueError, match=r"context must be in \[1, 8\], got 9"):
        LastToken(grammar, 9)
    with pytest.raises(ValueError, match=r"context must be in \[1, 8\], got 0"):
        LastToken(grammar, 0)
    with pytest.raises(TypeError, match="context must be an int"):
        LastToken(grammar, 4.0)
    with pytest.raises(TypeError, match="needs an rhmfast.RHM"):
        LastToken(object())
    with pytest.raises(ValueError, match="not defined for the sparse RHM"):
        LastToken(RHM(**GRAMMAR, sparsity=1))
    task = LastToken(grammar, 4)
    raw, _ = grammar.sample(4, seed=0)
    with pytest.raises(ValueError, match="mask id 4 at every hidden position"):
        task.bayes_error(raw)
    with pytest.raises(ValueError, match=r"shape \[B, 8\]"):
        task.bayes_error(raw[:, :4])
    with pytest.raises(TypeError, match="integer tensor"):
        task.bayes_error(raw.float())
    with pytest.raises(ValueError, match="return_tree"):
        task.split(4, 4, return_tree=True)
    produced = {tuple(row[4:7]) for row in grammar.decode(range(grammar.pmax))[0].tolist()}
    never = next(t for t in itertools.product(range(4), repeat=3) if t not in produced)
    impossible = task.sample(4)[0]
    impossible[0, 4:7] = torch.tensor(never, dtype=torch.uint8)
    with pytest.raises(ValueError, match="cannot produce"):
        task.bayes_error(impossible)


def _short_run(data, **extra):
    model = HierarchicalCNN(5, 16, 2, 3, n_classes=4, norm="mf", seed=0)
    arguments = dict(n_test=128, max_epochs=12, eval_every=1, batch_size=32, progress=False, seed_data=1)
    return model, train_sgd(model, data, 256, **{**arguments, **extra})


def test_train_sgd_learns_the_task_and_records_its_bayes_error(grammar):
    task = LastToken(grammar)
    _, record = _short_run(task)
    assert record.curve[-1]["train_loss"] < 0.7 * record.curve[0]["train_loss"]
    (_, _), (x_test, _) = task.split(256, 128, seed=1)
    assert record.bayes_error == task.bayes_error(x_test) and 0 < record.bayes_error < 0.75
    assert record.to_dict()["bayes_error"] == record.bayes_error
    assert record.config["task"] == "last-token" and record.config["context"] == 8 and record.seeds["rules"] == 0
    assert record.final_test_error >= record.bayes_error - 0.15  # nothing beats the floor by more than noise
    online = _short_run(task, online=True, max_epochs=2)[1]
    assert online.bayes_error == task.bayes_error(task.sample(128, seed=1)[0]) and online.config["online"]
    classify = train_sgd(HierarchicalCNN(4, 16, 2, 3, n_classes=4, seed=0), grammar, 64, n_test=32, max_epochs=1,
                         progress=False)
    assert classify.bayes_error == 0.0 and "task" not in classify.config and "context" not in classify.config
    with pytest.raises(ValueError, match="must equal"):
        train_sgd(HierarchicalCNN(4, 16, 2, 3, n_classes=4), task, 64, n_test=32, max_epochs=1, progress=False)


def test_replicas_train_the_task_as_train_sgd_does(grammar):
    task = LastToken(grammar, context=6)
    replicas = HierarchicalCNN.replicas(2, [0, 1], v=5, width=16, s=2, L=3, n_classes=4, norm="mf")
    solo = [replicas.replica(k) for k in range(2)]
    records = train_sgd_replicas(replicas, task, [64, 96], seed_data=[0, 1], seed_order=[0, 1], n_test=64,
                                 max_epochs=3, eval_every=1, progress=False)
    for k, model in enumerate(solo):
        alone = train_sgd(model, task, [64, 96][k], seed_data=k, seed_order=k, n_test=64, max_epochs=3,
                          eval_every=1, progress=False)
        assert records[k].curve == alone.curve and records[k].bayes_error == alone.bayes_error
        assert records[k].config == alone.config


TINY = dict(P=64, n_test=64, width=16, max_epochs=2, **GRAMMAR)


def test_configs_name_the_task_and_keep_old_names(grammar):
    plain = complete_config(dict(P=100))
    assert (plain["task"], plain["context"], plain["production"], plain["sparsity"]) == ("classify", None, "uniform", 0)
    defaults = dict(task="classify", context=None, production="uniform", zipf_exponent=None, zipf_levels=None,
                    sparsity=0)
    assert config_hash(dict(P=100, **defaults)) == config_hash(dict(P=100))
    last = complete_config(dict(TINY, task="last-token"))
    assert last["context"] == 8 and config_hash(last) == config_hash(dict(TINY, task="last-token", context=8))
    assert config_hash(last) != config_hash(dict(TINY, task="last-token", context=4)) != config_hash(TINY)
    hierarchy = complete_config(dict(P=10, data="hierarchy", gate="parity"))
    assert hierarchy["task"] is None and hierarchy["sparsity"] is None
    assert isinstance(data_of(last), LastToken) and data_of(TINY).__class__ is RHM
    for model, shape in (("hcnn", ("v", 5)), ("fc", ("d", 8)), ("fcn", ("v", 5))):
        net = build_model(dict(TINY, task="last-token", model=model))
        assert getattr(net, shape[0]) == shape[1] and net.n_classes == 4


@pytest.mark.parametrize("bad, message", [
    (dict(task="next"), "task must be one of"),
    (dict(context=4), "context is an option of task 'last-token'"),
    (dict(task="last-token", context=9), r"context must be in \[1, 8\]"),
    (dict(task="last-token", model="ren"), "task 'last-token' is learned end to end"),
    (dict(task="last-token", trainer="layerwise"), "task 'last-token' is learned end to end"),
    (dict(task="last-token", sparsity=1), "not defined for the sparse RHM"),
    (dict(production="power"), "production must be one of"),
    (dict(zipf_exponent=1.0), "zipf_exponent needs production='zipf'"),
    (dict(production="zipf"), "zipf_exponent must be given"),
    (dict(production="zipf", zipf_exponent=1.0), "give replacement=true"),
    (dict(production="zipf", zipf_exponent=1.0, trainer="layerwise"), "draws iid samples only"),
    (dict(production="zipf", zipf_exponent=1.0, replacement=True, order="pcsl"), "neither Zipf"),
    (dict(sparsity=-1), "sparsity must be >= 0"),
    (dict(sparsity=1, model="ren"), "sparse RHM .* is learned by the models on token ids"),
    (dict(production="zipf", zipf_exponent=1.0, replacement=True, require="assumption6"), "uniform grammars"),
    (dict(model="mla", width=30, heads=4), r"heads must divide the embedding dimension width = 30"),
    (dict(model="encoder", heads=0), "heads must be"),
    (dict(model="hlcn", whiten=True), "whiten is an option of the hcnn"),
    (dict(model="hlcn", trainer="layerwise"), r"trainer \(for model 'hlcn'\) must be one of"),
])
def test_bad_configs_are_refused(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        complete_config(dict(TINY, **bad))


def test_configs_of_grammar_variants_build_and_run_them():
    zipf = dict(TINY, production="zipf", zipf_exponent=1, zipf_levels=(2, 1), replacement=True)
    c = complete_config(zipf)
    assert (c["zipf_exponent"], c["zipf_levels"]) == (1.0, [1, 2])
    assert config_hash(c) == config_hash(dict(zipf, zipf_exponent=1.0, zipf_levels=[1, 2])) != config_hash(TINY)
    check_feasible(dict(zipf, P=1000))  # iid draws: no bound by pmax = 512
    record = run_config(dict(zipf, task="last-token"))
    assert record.config["production"] == "zipf" and record.config["zipf_levels"] == [1, 2]
    assert record.config["zipf_exponent"] == 1.0 and record.config["task"] == "last-token"
    assert 0 < record.bayes_error < 1
    sparse = dict(TINY, sparsity=1)
    model = build_model(sparse)
    assert (model.v, model.s, model.L, model.n_classes) == (5, 4, 3, 4)
    record = run_config(sparse)
    assert record.config["sparsity"] == 1 and record.bayes_error == 0.0 and "task" not in record.config
    assert run_config(dict(sparse, trainer="layerwise", max_epochs=1)).config["sparsity"] == 1


@pytest.mark.parametrize("model", ["hlcn", "mla", "encoder"])
def test_every_model_on_token_ids_runs_both_tasks(model):
    """The hLCN and the transformers take their shape from the data (the mask id is one more token, the
    targets are v symbols), train end to end and store the floor; the transformers' depth defaults to L."""
    for task, vocab, n_out in (("classify", 4, 4), ("last-token", 5, 4)):
        config = dict(TINY, task=task, model=model, width=16, heads=2)
        c = complete_config(config)
        assert c["depth"] == (3 if model != "hlcn" else None) and c["heads"] == (2 if model != "hlcn" else None)
        net = build_model(config)
        assert (net.v, net.n_classes) == (vocab, n_out) and getattr(net, "d", 8) == 8
        record = run_config(config)
        assert record.config["task"] == task if task != "classify" else "task" not in record.config
        assert len(record.curve) >= 1 and (record.bayes_error > 0) == (task == "last-token")


def test_run_config_and_packs_run_the_task():
    config = dict(TINY, task="last-token", context=6)
    record = run_config(config)
    task = data_of(config)
    assert record.bayes_error == task.bayes_error(task.split(64, 64)[1][0])
    assert record.config["task"] == "last-token" and record.config["context"] == 6
    configs = [dict(config, seed_sample=1, seed_model=1), dict(config, P=96)]
    assert pack_key(configs[0]) == pack_key(configs[1]) == pack_key(config) != pack_key(TINY)
    packed = run_pack(configs)
    for c, r in zip(configs, packed):
        alone = run_config(c)
        assert r.curve == alone.curve and r.bayes_error == alone.bayes_error
    with pytest.raises(ValueError, match="exceeds pmax = 512"):
        check_feasible(dict(config, P=500))


def test_stored_runs_carry_the_floor_to_the_analysis(tmp_path):
    store = ResultStore(tmp_path)
    last = dict(TINY, task="last-token")
    store.write(make_record(last, run_config(last)))
    old = make_record(TINY, run_config(TINY))  # as stored before the task keys existed
    for key in ("task", "context", "production", "zipf_exponent", "zipf_levels", "sparsity"):
        del old["config"][key]
    del old["result"]["bayes_error"]
    store.write(old)
    rows = {r["learner"]: r for r in load_rows(tmp_path)}
    assert set(rows) == {"hcnn context=None task=classify", "hcnn context=8 task=last-token"}
    assert math.isnan(rows["hcnn context=None task=classify"]["bayes_error"])
    assert 0 < rows["hcnn context=8 task=last-token"]["bayes_error"] < 1
    # the analysis counts the targets: v symbols for last-token prediction, even where the labels are fewer
    fewer = dict(last, n_classes=3)
    store.write(make_record(fewer, run_config(fewer)))
    rows = [r for r in load_rows(tmp_path) if r["learner"].endswith("task=last-token")]
    assert sorted(r["n_classes"] for r in rows) == [4, 4]


def _rows(errors, bayes, learner="hcnn"):
    ps = [10, 100, 1000, 10000]
    return [dict(learner=learner, v=4, n_classes=4, s=2, m=2, L=3, P=p, seed=seed, test_error=e, n_test=100,
                 bayes_error=b) for seed in (0, 1) for p, e, b in zip(ps, errors, bayes)]


def test_pstar_counts_the_excess_error_over_the_floor(tmp_path, monkeypatch):
    assert threshold(4, 0.1, 0.2) == pytest.approx(0.28) and threshold(4, 0.1) == 0.1
    assert threshold(4, "rand/10", 0.2) == pytest.approx(0.255) and threshold(4, "rand/10", 0.0) == 0.075
    errors = [0.6, 0.3, 0.25, 0.22]
    (floored,) = pstar_table(_rows(errors, [0.2, 0.19, 0.21, 0.2]), 0.1, n_boot=50)
    assert floored["floor"] == pytest.approx(0.2) and floored["eps"] == pytest.approx(0.28)
    assert floored["pstar"] == pytest.approx(100 * 10 ** 0.4)  # 0.28 is 0.4 of the way from 0.3 to 0.25
    (unknown,) = pstar_table(_rows(errors, [None] * 4), 0.1, n_boot=50)
    (zero,) = pstar_table(_rows(errors, [0.0] * 4), 0.1, n_boot=50)
    assert unknown["floor"] == zero["floor"] == 0.0 and unknown["pstar"] == zero["pstar"] == math.inf
    with pytest.raises(ValueError, match="bayes_error must be a number in"):
        pstar_table(_rows(errors, [1.5] * 4), 0.1)
    write_tables([floored], [], str(tmp_path))
    assert "| floor |" in (tmp_path / "pstar.md").read_text()
    assert "floor" in (tmp_path / "pstar.csv").read_text().splitlines()[0].split(",")
    lines = []
    original = matplotlib.axes.Axes.axhline

    def axhline(self, y=0, *args, **kwargs):
        lines.append((y, kwargs.get("ls")))
        return original(self, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", axhline)
    plot_error_vs_p(_rows(errors, [0.2] * 4) + _rows(errors, [0.0] * 4, "fc"), str(tmp_path / "curves"))
    floors = [y for y, ls in lines if ls == "--" and y == pytest.approx(0.2)]
    assert len(floors) == 1 and np.isclose(sorted(y for y, _ in lines), [0.1, 0.2, 0.28]).all()
