"""End-to-end baselines of label hierarchies (rhmfast.train.residual_end_to_end, rhmfast.models.ShallowMLP)."""
import math

import pytest
import torch

from rhmfast.data import LabelHierarchy
from rhmfast.models import ResidualLayerwiseNet, ShallowMLP
from rhmfast.train import residual_end_to_end as e2e
from rhmfast.train import train_hierarchy_end_to_end

# The parity of 8 (16) bits as a tree of 2-bit parities: levels of 4, 2, 1 (8, 4, 2, 1) labels.
PARITY8 = dict(d=8, level_sizes=[4, 2, 1], fan_in=2, gate="parity", wiring="tree")
PARITY16 = dict(d=16, level_sizes=[8, 4, 2, 1], fan_in=2, gate="parity", wiring="tree")
# One budget for every learner: Adam, lr 0.03, batch 64, up to 60 epochs of 384 samples, width 32, 512 test
# samples. Measured (seeds 0-4 for data, order and model, 1 thread, 2-core CPU under load):
#   residual net, all labels, 8 bits:  top error 0.000 (all five seeds), stops at train loss 1e-3 after 16-19
#                                       epochs, about 0.2 s a run;
#   residual net, top label,  8 bits:  0.34 - 0.52 (60 epochs, about 0.6 s);
#   residual net, top label, 16 bits:  0.45 - 0.51 (about 0.7 s);
#   ShallowMLP,   top label, 16 bits:  0.46 - 0.52 (about 0.25 s).
BUDGET = dict(lr=3e-2, batch_size=64, epochs=60, n_test=512, eval_every=10, progress=False)
N_TRAIN, WIDTH = 384, 32
# A few epochs of a tiny run, for the tests of what the trainer records and checks.
TINY = dict(lr=1e-2, batch_size=32, epochs=4, n_test=64, eval_every=2, progress=False)
TIMING_FIELDS = ("wall_time_s", "samples_per_s")


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)  # tiny models: one thread is several times faster on a loaded machine


@pytest.fixture(scope="module")
def parity8():
    return LabelHierarchy(**PARITY8)


@pytest.fixture(scope="module")
def parity16():
    return LabelHierarchy(**PARITY16)


def residual(hierarchy, width=WIDTH, seed=0, **kwargs):
    return ResidualLayerwiseNet(hierarchy, width=width, features="trained", write="tanh", seed=seed, **kwargs)


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def without_timing(record):
    return {k: v for k, v in record.to_dict().items() if k not in TIMING_FIELDS}


# ---- learning -----------------------------------------------------------------------------------

def test_all_labels_learn_the_8_bit_parity_tree(parity8):
    record = train_hierarchy_end_to_end(residual(parity8), parity8, N_TRAIN, labels="all", **BUDGET)
    assert record.final_test_error <= 0.05, record.curve
    assert record.stopped_by == "loss_threshold"  # measured: after 16-19 of the 60 epochs


@pytest.mark.parametrize("name, hierarchy, make, floor", [
    ("residual-top-8", "parity8", lambda h: residual(h), 0.2),
    ("residual-top-16", "parity16", lambda h: residual(h), 0.3),
    ("mlp-top-16", "parity16", lambda h: ShallowMLP(h.d, 1, WIDTH, seed=0), 0.3),
], ids=["residual-top-8", "residual-top-16", "mlp-top-16"])
def test_top_label_only_fails_at_the_same_budget(name, hierarchy, make, floor, request):
    h = request.getfixturevalue(hierarchy)
    record = train_hierarchy_end_to_end(make(h), h, N_TRAIN, labels="top", **BUDGET)
    assert record.final_test_error > floor, (name, record.curve)
    assert record.stopped_by == "max_epochs"


# ---- the record ---------------------------------------------------------------------------------

@pytest.mark.parametrize("labels, make", [
    ("top", lambda h: residual(h, width=8)),
    ("all", lambda h: residual(h, width=8)),
    ("top", lambda h: ShallowMLP(h.d, 1, 8, seed=3)),
    ("all", lambda h: ShallowMLP(h.d, h.n_labels, 8, seed=3)),
], ids=["residual-top", "residual-all", "mlp-top", "mlp-all"])
def test_record_fields(parity8, labels, make):
    model = make(parity8)
    record = train_hierarchy_end_to_end(model, parity8, 40, labels=labels, loss="hinge", seed_data=5, seed_order=6,
                                        **TINY)
    assert record.trainer == "train_hierarchy_end_to_end"
    assert record.config["labels"] == labels and record.config["loss"] == "hinge"
    assert record.config["model"] == type(model).__name__ and record.config["width"] == 8
    assert record.config["n_train"] == 40 and record.config["level_sizes"] == [4, 2, 1]
    assert record.config["optimizer"] == "adam" and record.config["lr"] == TINY["lr"]
    assert record.seeds == dict(data=5, order=6, model=model.seed)
    assert record.stopped_by in ("loss_threshold", "max_epochs") and not record.interrupted
    epochs = [point["epoch"] for point in record.curve]
    assert epochs == sorted(epochs) and epochs and all(e % TINY["eval_every"] == 0 or e == epochs[-1] for e in epochs)
    for point in record.curve:
        assert {"epoch", "samples_seen", "train_loss", "test_error"} <= set(point)
        assert 0.0 <= point["test_error"] <= 1.0 and point["samples_seen"] == 40 * point["epoch"]
    assert record.final_test_error == record.curve[-1]["test_error"]
    assert record.samples_seen == 40 * epochs[-1]
    assert record.wall_time_s > 0 and model.training


def test_stops_at_the_loss_threshold(parity8):
    record = train_hierarchy_end_to_end(residual(parity8, width=8), parity8, 40, loss_threshold=10.0, **TINY)
    assert record.stopped_by == "loss_threshold" and [p["epoch"] for p in record.curve] == [1]
    assert record.curve[0]["train_loss"] < 10.0 and record.final_test_error == record.curve[0]["test_error"]


@pytest.mark.parametrize("labels, make", [("all", lambda h, s: residual(h, width=8, seed=s)),
                                          ("top", lambda h, s: ShallowMLP(h.d, 1, 8, seed=s))],
                         ids=["residual-all", "mlp-top"])
def test_same_seeds_same_run(parity8, labels, make):
    runs = []
    for seed_order in (1, 1, 2):
        model = make(parity8, 4)
        record = train_hierarchy_end_to_end(model, parity8, 40, labels=labels, seed_data=3, seed_order=seed_order,
                                            **TINY)
        runs.append((without_timing(record), model.state_dict()))
    (first, state), (again, state_again), (other, state_other) = runs
    assert first == again
    assert state.keys() == state_again.keys() and all(torch.equal(state[k], state_again[k]) for k in state)
    # another minibatch order trains another model: the comparison above could fail
    assert not all(torch.equal(state[k], state_other[k]) for k in state)


# ---- which labels the loss reads ----------------------------------------------------------------

def test_all_labels_train_the_mlp_readout_of_every_label(parity8):
    mlp = ShallowMLP(parity8.d, parity8.n_labels, 8, seed=0)
    assert torch.count_nonzero(mlp.readout.weight) == 0  # read-outs start at zero
    train_hierarchy_end_to_end(mlp, parity8, 40, labels="all", **TINY)
    for row in range(parity8.n_labels):
        assert torch.count_nonzero(mlp.readout.weight[row]) > 0, row
        assert mlp.readout.bias[row] != 0, row


def test_top_labels_reach_every_block_through_tanh_writes(parity8):
    net = residual(parity8, width=8)
    before = snapshot(net)
    train_hierarchy_end_to_end(net, parity8, 40, labels="top", **TINY)
    after = snapshot(net)
    for name in before:  # read-outs of levels 1 and 2 included: the gradient passes the writes of their blocks
        assert not torch.equal(before[name], after[name]), name


@pytest.mark.parametrize("labels, make", [("top", lambda h: residual(h, width=8)),
                                          ("all", lambda h: residual(h, width=8)),
                                          ("top", lambda h: ShallowMLP(h.d, 1, 8, seed=0)),
                                          ("all", lambda h: ShallowMLP(h.d, h.n_labels, 8, seed=0))],
                         ids=["residual-top", "residual-all", "mlp-top", "mlp-all"])
def test_the_loss_reads_only_the_labels_asked_for(parity8, labels, make, monkeypatch):
    """Training with the lower levels' labels all set to +1: the same run on labels="top", another on "all".
    (Not negated: negating a label is a symmetry of the MLP's training, its read-out row negated.)"""
    top_lo = int(parity8.levels[-1][0])
    runs = []
    for corrupt in (False, True):
        if corrupt:
            sample = parity8.sample

            def constant_below_top(n, **kwargs):
                x, y = sample(n, **kwargs)
                y = y.clone()
                y[:, :top_lo] = 1
                return x, y

            monkeypatch.setattr(parity8, "sample", constant_below_top)
        model = make(parity8)
        record = train_hierarchy_end_to_end(model, parity8, 40, labels=labels, **TINY)
        runs.append((without_timing(record), model.state_dict()))
    (record, state), (record_corrupt, state_corrupt) = runs
    same = all(torch.equal(state[k], state_corrupt[k]) for k in state)
    assert same == (labels == "top")
    assert (record == record_corrupt) == (labels == "top")


# ---- interruption -------------------------------------------------------------------------------

def test_ctrl_c_is_recorded_as_interrupted(parity8, monkeypatch):
    batches = e2e.minibatches
    calls = []

    def interrupted_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return batches(*args, **kwargs)

    monkeypatch.setattr(e2e, "minibatches", interrupted_in_epoch_2)
    net = residual(parity8, width=8).eval()
    record = train_hierarchy_end_to_end(net, parity8, 40, **{**TINY, "eval_every": 1})
    assert record.interrupted and record.stopped_by == "interrupted"
    assert math.isnan(record.final_test_error)
    assert [p["epoch"] for p in record.curve] == [1] and record.samples_seen == 40
    assert not net.training  # the model's mode is restored


# ---- checks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, kwargs, name", [
    (lambda h: residual(h, width=4), dict(labels="mid"), "labels"),
    (lambda h: ResidualLayerwiseNet(h, width=4, features="random", write="tanh"), {}, "features"),
    (lambda h: ResidualLayerwiseNet(h, width=4, features="trained", write="sign"), {}, "write"),
    (lambda h: ResidualLayerwiseNet(LabelHierarchy(8, [4, 2], 2, wiring="tree"), width=4, features="trained",
                                    write="tanh"), {}, "n_labels"),
    (lambda h: ShallowMLP(8, 7, 4), dict(labels="top"), "n_out"),
    (lambda h: ShallowMLP(8, 1, 4), dict(labels="all"), "n_out"),
    (lambda h: ShallowMLP(16, 1, 4), dict(labels="top"), "d=8"),
    (lambda h: residual(h, width=4), dict(loss="l1"), "loss"),
    (lambda h: residual(h, width=4), dict(lr=0), "lr"),
    (lambda h: residual(h, width=4), dict(lr=float("nan")), "lr"),
    (lambda h: residual(h, width=4), dict(weight_decay=-1.0), "weight_decay"),
    (lambda h: residual(h, width=4), dict(loss_threshold=float("inf")), "loss_threshold"),
    (lambda h: residual(h, width=4), dict(epochs=0), "epochs"),
    (lambda h: residual(h, width=4), dict(batch_size=0), "batch_size"),
    (lambda h: residual(h, width=4), dict(eval_every=0), "eval_every"),
    (lambda h: residual(h, width=4), dict(n_test=0), "n_test"),
    (lambda h: residual(h, width=4), dict(n_train=0), "n_train"),
    (lambda h: residual(h, width=4), dict(seed_data=-1), "seed_data"),
    (lambda h: residual(h, width=4), dict(seed_order=-1), "seed_order"),
], ids=["labels", "features", "write", "other-hierarchy", "mlp-n_out-top", "mlp-n_out-all", "mlp-d", "loss", "lr0",
        "lr-nan", "weight_decay", "loss_threshold", "epochs", "batch_size", "eval_every", "n_test", "n_train",
        "seed_data", "seed_order"])
def test_bad_arguments_raise_value_error_naming_them(parity8, make, kwargs, name, monkeypatch):
    def no_sampling(*args, **kw):
        raise AssertionError("sampled before checking the arguments")

    model = make(parity8)
    monkeypatch.setattr(parity8, "sample", no_sampling)
    kwargs = {"n_train": 16, **kwargs}
    with pytest.raises(ValueError, match=name):
        train_hierarchy_end_to_end(model, parity8, kwargs.pop("n_train"), progress=False, **kwargs)


@pytest.mark.parametrize("model", [torch.nn.Linear(8, 1), "mlp", None])
def test_a_non_model_is_a_type_error(parity8, model):
    with pytest.raises(TypeError, match="model"):
        train_hierarchy_end_to_end(model, parity8, 16, progress=False)


# ---- ShallowMLP ---------------------------------------------------------------------------------

def test_mlp_shapes_and_formula(parity8):
    mlp = ShallowMLP(8, 3, 16, activation="tanh", seed=0)
    x, _ = parity8.sample(10, seed=1)
    assert mlp(x).shape == (10, 3) and mlp(x).dtype == torch.float32  # int8 +-1 in, float32 out
    assert torch.count_nonzero(mlp(x)) == 0  # the read-out starts at zero
    with torch.no_grad():
        mlp.readout.weight.normal_()
        mlp.readout.bias.normal_()
    xf = x.float()
    expected = torch.tanh(xf @ mlp.weight.t() / math.sqrt(8) + mlp.bias) @ mlp.readout.weight.t() + mlp.readout.bias
    torch.testing.assert_close(mlp(x), expected)
    for bad in (torch.ones(10, 7), torch.ones(10, 9), torch.ones(8), torch.ones(2, 10, 8)):
        with pytest.raises(ValueError, match=r"d=8"):
            mlp(bad)


def test_mlp_seeded_init_reproducible():
    a, b, c = ShallowMLP(8, 2, 16, seed=7), ShallowMLP(8, 2, 16, seed=7), ShallowMLP(8, 2, 16, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["weight"], sc["weight"]) and not torch.equal(sa["bias"], sc["bias"])
    assert a.seed == 7 and all(p.requires_grad for p in a.parameters())
    assert "n_out=2" in repr(a) and "width=16" in repr(a)


@pytest.mark.parametrize("kwargs, name", [(dict(d=0), "d"), (dict(n_out=0), "n_out"), (dict(width=0), "width"),
                                          (dict(activation="sigmoid"), "activation"), (dict(seed=-1), "seed")])
def test_mlp_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ShallowMLP(**{"d": 8, "n_out": 1, "width": 4, **kwargs})
