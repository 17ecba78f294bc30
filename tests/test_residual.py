"""The residual layerwise learner of label hierarchies (rhmfast.models.residual, rhmfast.train.residual)."""
import pytest
import torch

from rhmfast.data import LabelHierarchy
from rhmfast.models import ResidualLayerwiseNet
from rhmfast.train import residual as residual_trainer
from rhmfast.train import train_residual_layerwise

# The parity of 16 bits as a tree of 2-bit parities: levels of 8, 4, 2, 1 labels.
PARITY16 = dict(d=16, level_sizes=[8, 4, 2, 1], fan_in=2, gate="parity", wiring="tree")
# Adam on the logistic loss (ReLU features, width 4096) learns the tree: top-label test error 0.009 measured at
# 2000 samples per stage, 0.22 at 1000, 0.49 at 32 (seed 0, 2-core CPU, about 3 s a run).
ADAM = dict(loss="logistic", lr=0.02, batch_size=256, epochs=30)
@pytest.fixture(scope="module")
def parity16():
    return LabelHierarchy(**PARITY16)


def snapshot(net):
    return {name: p.detach().clone() for name, p in net.named_parameters()}


def block_of(name):
    return int(name.split(".")[1]) + 1  # weights.i, biases.i, readouts.i.*: block i + 1


@pytest.mark.parametrize("features, solver", [("random", "ridge"), ("random", "adam"), ("trained", "adam")])
def test_each_stage_changes_only_its_block(parity16, features, solver, monkeypatch):
    net = ResidualLayerwiseNet(parity16, width=64, features=features, seed=1)
    snapshots, sample = [], parity16.sample

    def spy(n, **kwargs):  # the test set, then each stage's samples as the stage starts
        snapshots.append(snapshot(net))
        return sample(n, **kwargs)

    monkeypatch.setattr(parity16, "sample", spy)
    record = train_residual_layerwise(net, parity16, 64, solver=solver, epochs=2, batch_size=32, progress=False)
    snapshots.append(snapshot(net))
    assert [s["level"] for s in record.stages] == [1, 2, 3, 4] and len(snapshots) == 6
    assert record.config["solver"] == solver
    for level in range(1, 5):
        before, after = snapshots[level], snapshots[level + 1]
        for name in before:
            changed = not torch.equal(before[name], after[name])
            learns = block_of(name) == level and (name.startswith("readouts") or features == "trained")
            assert changed == learns, (level, name)


def test_block_reads_only_the_levels_below(parity16):
    net = ResidualLayerwiseNet(parity16, width=32, seed=2)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for readout in net.readouts:
            readout.weight.normal_(generator=gen)
            readout.bias.normal_(generator=gen)
    x, _ = parity16.sample(50, seed=4)
    stream = net.stream(x)
    scores = net(x)
    for level in range(1, net.r + 1):
        own = net.block_scores(level, stream)
        lo, hi = net.offsets[level - 1], net.offsets[level]
        assert torch.equal(own, scores[:, lo:hi])  # forward reads the stream the blocks below wrote
        perturbed = stream.clone()
        perturbed[:, net.d + lo:] = torch.randn(50, net.n_labels - lo, generator=gen)
        assert torch.equal(net.block_scores(level, perturbed), own)
        below = stream.clone()
        below[:, :net.d + lo] *= -1  # what it does read matters
        assert not torch.equal(net.block_scores(level, below), own)


def test_learns_the_parity_tree_and_fails_far_below(parity16):
    # The defaults (quadratic features, ridge read-outs) at width 1024: top-label error 0 measured at 600
    # samples per stage, 0.28 at 300 (seed 0).
    net = ResidualLayerwiseNet(parity16, width=1024, seed=0)
    learned = train_residual_layerwise(net, parity16, 600, progress=False)
    assert learned.config["solver"] == "ridge" and learned.config["activation"] == "quadratic"
    assert learned.stopped_by == "done" and learned.final_test_error <= 0.02, learned.stages
    assert learned.final_test_error == learned.stages[-1]["test_error"]
    net = ResidualLayerwiseNet(parity16, width=1024, seed=0)
    failed = train_residual_layerwise(net, parity16, 40, progress=False)
    assert failed.final_test_error > 0.3, failed.stages


def test_adam_learns_the_parity_tree_and_fails_far_below(parity16):
    net = ResidualLayerwiseNet(parity16, width=4096, activation="relu", seed=0)
    learned = train_residual_layerwise(net, parity16, 2000, progress=False, **ADAM)
    assert learned.config["solver"] == "adam" and learned.final_test_error <= 0.05, learned.stages
    net = ResidualLayerwiseNet(parity16, width=4096, activation="relu", seed=0)
    failed = train_residual_layerwise(net, parity16, 32, progress=False, **ADAM)
    assert failed.final_test_error > 0.3, failed.stages


@pytest.mark.parametrize("n, q", [(301, 23), (37, 90), (130, 200)])  # normal equations; kernel form; both
def test_ridge_read_out_is_the_penalised_least_squares_solution(monkeypatch, n, q):
    gen = torch.Generator().manual_seed(11)
    phi = torch.randn(n, q, generator=gen) * 3 + 1
    targets = torch.randn(n, 4, generator=gen).sign()
    monkeypatch.setattr(residual_trainer, "RIDGE_CHUNK", 64)  # several chunks, the last one short
    weight, bias = residual_trainer.fit_readout_ridge(lambda a, b: phi[a:b], targets, 0.1)
    x, t = phi.double(), targets.double()
    centred = x - x.mean(0)
    lam = 0.1 * centred.var(0, unbiased=False).mean()
    expected = torch.linalg.solve(centred.T @ centred / n + lam * torch.eye(q, dtype=torch.float64),
                                  centred.T @ (t - t.mean(0)) / n)
    # float32 features: each chunk's products are float32 before the float64 sum
    torch.testing.assert_close(weight, expected.T, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bias, t.mean(0) - x.mean(0) @ expected, rtol=1e-5, atol=1e-6)


def test_same_seeds_same_record(parity16):
    def run():
        net = ResidualLayerwiseNet(parity16, width=128, features="trained", seed=5)
        record = train_residual_layerwise(net, parity16, [64, 48, 40, 32], epochs=3, batch_size=16, seed_data=7,
                                          seed_order=2, progress=False).to_dict()
        del record["wall_time_s"], record["samples_per_s"]
        return record, net.state_dict()

    (a, state_a), (b, state_b) = run(), run()
    assert a == b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert a["trainer"] == "train_residual_layerwise" and a["seeds"] == dict(data=7, order=2, model=5)
    assert [s["n_samples"] for s in a["stages"]] == [64, 48, 40, 32]


def test_interrupt_keeps_finished_stages(parity16, monkeypatch):
    net = ResidualLayerwiseNet(parity16, width=32, seed=0)
    sample, calls = parity16.sample, []

    def interrupted(n, **kw):  # the test set, stage 1, then Ctrl-C at stage 2's samples
        calls.append(n)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return sample(n, **kw)

    monkeypatch.setattr(parity16, "sample", interrupted)
    record = train_residual_layerwise(net, parity16, 32, epochs=1, progress=False)
    assert record.interrupted and record.stopped_by == "interrupted"
    assert [s["level"] for s in record.stages] == [1]
    assert record.final_test_error != record.final_test_error  # nan


@pytest.mark.parametrize("kwargs, name", [
    (dict(width=0), "width"), (dict(beta=0.0), "beta"), (dict(beta=float("inf")), "beta"),
    (dict(activation="sigmoid"), "activation"), (dict(features="kernel"), "features"),
    (dict(write="round"), "write"), (dict(seed=-1), "seed"),
])
def test_bad_net_arguments_name_the_parameter(parity16, kwargs, name):
    with pytest.raises(ValueError, match=name):
        ResidualLayerwiseNet(parity16, **kwargs)


@pytest.mark.parametrize("args, kwargs, name", [
    ((0,), {}, "n_per_stage"), (([10, 10],), {}, "n_per_stage"), ((10,), dict(loss="l1"), "loss"),
    ((10,), dict(lr=0.0), "lr"), ((10,), dict(lr=float("nan")), "lr"), ((10,), dict(batch_size=0), "batch_size"),
    ((10,), dict(epochs=0), "epochs"), ((10,), dict(weight_decay=-1.0), "weight_decay"),
    ((10,), dict(n_test=0), "n_test"), ((10,), dict(seed_data=-1), "seed_data"),
    ((10,), dict(solver="lbfgs"), "solver"), ((10,), dict(ridge=0.0), "ridge"),
    ((10,), dict(solver="ridge", loss="hinge"), "solver"),
])
def test_bad_trainer_arguments_name_the_parameter(parity16, args, kwargs, name):
    net = ResidualLayerwiseNet(parity16, width=8, seed=0)
    with pytest.raises(ValueError, match=name):
        train_residual_layerwise(net, parity16, *args, progress=False, **kwargs)


def test_ridge_needs_frozen_features(parity16):
    net = ResidualLayerwiseNet(parity16, width=8, features="trained", seed=0)
    with pytest.raises(ValueError, match="solver='ridge'"):
        train_residual_layerwise(net, parity16, 10, solver="ridge", progress=False)
    assert train_residual_layerwise(net, parity16, 10, epochs=1, progress=False).config["solver"] == "adam"


def test_net_must_fit_the_hierarchy(parity16):
    net = ResidualLayerwiseNet(LabelHierarchy(8, [4, 2, 1], 2, wiring="tree"), width=8, seed=0)
    with pytest.raises(ValueError, match="hierarchy"):
        train_residual_layerwise(net, parity16, 10, progress=False)
    with pytest.raises(ValueError, match="hierarchy"):
        ResidualLayerwiseNet(object())
