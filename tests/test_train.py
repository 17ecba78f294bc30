"""Trainers: they learn above n_c·m^L and stay near chance far below it, Ren's stage outputs approach the
exact posteriors, runs repeat bit for bit, Ctrl-C returns a partial record, bad configurations raise."""
import math
from fractions import Fraction

import pytest
import torch

import rhmfast
from rhmfast.models import FullyConnected, HierarchicalCNN, RenLayerwiseLearner
from rhmfast.train import (fit_ridge, ren_stage_sizes, test_error, train_layerwise_sgd, train_ren_layerwise,
                           train_sgd)

test_error.__test__ = False  # a function of rhmfast, not a test

# v = n_c = 8, m = 2, s = 2, L = 4: n_c m^L = 128, pmax = 8 * 2^15.
G4 = dict(v=8, m=2, s=2, L=4, seed=1)


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: one thread is as fast, and cannot be oversubscribed on shared cores."""
    torch.set_num_threads(1)


def hcnn(L=4, width=64, seed=0, **kw):
    return HierarchicalCNN(8, width, 2, L, 8, norm="mf", seed=seed, **kw)


def test_sgd_learns_well_above_nc_m_L_and_not_far_below():
    g = rhmfast.RHM(**G4)
    above = train_sgd(hcnn(), g, 1024, n_test=1024, max_epochs=60, eval_every=20, progress=False)
    below = train_sgd(hcnn(), g, 16, n_test=1024, max_epochs=60, eval_every=20, progress=False)
    assert above.final_test_error < 0.05, above.curve
    assert below.final_test_error > 0.6, below.curve  # chance: 1 - 1/8
    assert above.curve[-1]["train_loss"] < 0.05 and above.samples_seen == 1024 * above.curve[-1]["epoch"]
    assert above.config["n_train"] == 1024 and above.seeds == dict(rules=1, data=0, order=0, model=0)


def test_ren_learner_learns_with_enough_samples_and_its_stages_approach_the_posteriors():
    g = rhmfast.RHM(8, 2, 2, 3, seed=1)

    def run(scale):
        learner = RenLayerwiseLearner(8, 2, 3, features="rff", n_features=256, sigma=[0.2, 0.2, 1.0], seed=0)
        return train_ren_layerwise(learner, g, scale, n_test=1024, progress=False)

    small, large = run(3), run(100)
    assert [st["level"] for st in large.stages] == [3, 2, 1]
    assert [st["n_samples"] for st in large.stages] == [800, 400, 200] == list(ren_stage_sizes(g, 100).values())
    assert large.samples_seen == 1400
    for a, b in zip(small.stages, large.stages):
        assert b["posterior_distance"] < a["posterior_distance"], (small.stages, large.stages)
    assert large.stages[0]["posterior_distance"] < 0.3
    assert large.final_test_error < 0.05 < 0.6 < small.final_test_error


def test_ren_input_stage_converges_to_the_exact_posterior():
    """With the tensor-product embedding the input stage is exact: its error is the sampling noise only."""
    g = rhmfast.RHM(8, 2, 2, 2, seed=0)
    distances = [train_ren_layerwise(RenLayerwiseLearner(8, 2, 2), g, scale, progress=False, n_test=64)
                 .stages[0]["posterior_distance"] for scale in (10, 100, 1000, 10000)]
    assert all(b < a for a, b in zip(distances, distances[1:])), distances
    assert distances[-1] < 0.05 < distances[0]


def test_layerwise_sgd_with_hints_learns_and_records_each_layer():
    g = rhmfast.RHM(8, 2, 2, 3, seed=1)
    model = hcnn(L=3)
    record = train_layerwise_sgd(model, g, 512, n_test=512, hints=True, max_epochs=30, eval_every=10,
                                 progress=False)
    assert [st["layer"] for st in record.stages] == [1, 2, 3]
    # Every curve point names the layer its stage trained; a stage's last point is where it stopped.
    layers = [c["layer"] for c in record.curve]
    assert layers == sorted(layers) and set(layers) == {1, 2, 3}
    for stage in record.stages:
        assert [c["epoch"] for c in record.curve if c["layer"] == stage["layer"]][-1] == stage["epochs"]
    assert record.final_test_error < 0.1, record.stages
    assert record.final_test_error == test_error(model, *g.split(512, 512, seed=0)[1])  # the readout was installed
    assert all(p.requires_grad for p in model.parameters())


def test_layerwise_sgd_trains_only_the_current_layer():
    g = rhmfast.RHM(8, 2, 2, 3, seed=1)
    model = hcnn(L=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def stop_after_first_layer(point):
        seen.append(point)
        raise KeyboardInterrupt

    record = train_layerwise_sgd(model, g, 256, n_test=256, max_epochs=2, eval_every=1, progress=False,
                                 callback=stop_after_first_layer)
    after = model.state_dict()
    assert record.interrupted and record.stopped_by == "interrupted" and len(seen) == 1
    assert not torch.equal(before["embed"], after["embed"])  # layer 1 learned
    for key in ("weights.0", "weights.1", "beta"):
        assert torch.equal(before[key], after[key]), key


@pytest.mark.parametrize("online", [False, True])
def test_sgd_runs_repeat_bit_for_bit(online):
    g = rhmfast.RHM(**G4)
    records, states = [], []
    for _ in range(2):
        model = hcnn(width=16)
        records.append(train_sgd(model, g, 256, n_test=256, max_epochs=3, eval_every=1, online=online,
                                 seed_data=5, seed_order=6, progress=False))
        states.append(model.state_dict())
    a, b = records
    assert a.curve == b.curve and a.final_test_error == b.final_test_error and len(a.curve) == 3
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    for seeds in (dict(seed_data=8, seed_order=6), dict(seed_data=5, seed_order=7)):
        if online and seeds["seed_order"] == 7:
            continue  # online batches come from the data stream: seed_order plays no part
        other = train_sgd(hcnn(width=16), g, 256, n_test=256, max_epochs=3, eval_every=1, online=online,
                          progress=False, **seeds)
        assert [c["train_loss"] for c in other.curve] != [c["train_loss"] for c in a.curve], seeds  # seeds matter


def test_layerwise_and_ren_runs_repeat_bit_for_bit():
    g = rhmfast.RHM(8, 2, 2, 3, seed=1)
    lw = [train_layerwise_sgd(hcnn(L=3, width=16), g, 128, n_test=128, hints=True, max_epochs=2, eval_every=1,
                              progress=False) for _ in range(2)]
    assert lw[0].curve == lw[1].curve and lw[0].stages == lw[1].stages
    ren = []
    for _ in range(2):
        learner = RenLayerwiseLearner(8, 2, 3, features="rff", n_features=32, seed=3)
        ren.append((train_ren_layerwise(learner, g, 5, n_test=128, progress=False), learner))
    assert ren[0][0].stages == ren[1][0].stages and ren[0][0].final_test_error == ren[1][0].final_test_error
    for w0, w1 in zip(ren[0][1].W, ren[1][1].W):
        assert torch.equal(w0, w1)


def test_interruption_returns_the_partial_record():
    g = rhmfast.RHM(**G4)
    model = hcnn(width=16)

    def interrupt(point):
        if point["epoch"] == 2:
            raise KeyboardInterrupt

    record = train_sgd(model, g, 256, n_test=256, max_epochs=50, eval_every=1, callback=interrupt, progress=False)
    assert record.interrupted and record.stopped_by == "interrupted"
    assert [c["epoch"] for c in record.curve] == [1, 2] and record.samples_seen == 512
    assert 0 <= record.final_test_error <= 1 and record.wall_time_s > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert record.to_dict()["interrupted"] is True


def test_fully_connected_trains_with_train_sgd():
    g = rhmfast.RHM(8, 2, 2, 2, seed=0)  # pmax = 64: memorising most of it generalises to the rest
    record = train_sgd(FullyConnected(8, 4, 64, 1, 8, seed=0), g, 48, n_test=16, max_epochs=200, eval_every=50,
                       progress=False)
    assert record.curve[-1]["train_loss"] < 0.05


def test_ridge_closed_form_equals_gradient_descent():
    torch.manual_seed(0)
    x = torch.randn(200, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (200,))
    closed = fit_ridge(x, y, 3, 0.1)
    gd = fit_ridge(x, y, 3, 0.1, steps=2000, lr=0.3)
    torch.testing.assert_close(gd, closed)
    grad = closed @ (x.t() @ x / 200) - torch.nn.functional.one_hot(y, 3).double().t() @ x / 200 + 0.1 * closed
    assert grad.abs().max() < 1e-12  # stationary point of the ridge objective


def test_bad_configurations_raise_clear_errors():
    g = rhmfast.RHM(8, 2, 2, 2, seed=0)
    with pytest.raises(ValueError, match="n_train"):
        train_sgd(hcnn(L=2), g, 0, progress=False)
    with pytest.raises(ValueError, match="pmax"):
        train_sgd(hcnn(L=2), g, 60, n_test=16, progress=False)  # pmax = 64, without replacement
    with pytest.raises(ValueError, match="batch_size"):
        train_sgd(hcnn(L=2), g, 16, n_test=16, batch_size=0, progress=False)
    with pytest.raises(TypeError, match="HierarchicalCNN"):
        train_layerwise_sgd(FullyConnected(8, 4, 8, 1, 8), g, 16, n_test=16, progress=False)
    with pytest.raises(ValueError, match="v, s, L, n_classes"):
        train_layerwise_sgd(hcnn(L=3), g, 16, n_test=16, progress=False)
    with pytest.raises(ValueError, match="scale"):
        train_ren_layerwise(RenLayerwiseLearner(8, 2, 2), g, 0.0, progress=False)
    with pytest.raises(ValueError, match="gd_steps"):
        train_ren_layerwise(RenLayerwiseLearner(8, 2, 2), g, 1.0, gd_steps=-1, progress=False)
    with pytest.raises(ValueError, match="scale must be finite"):
        train_ren_layerwise(RenLayerwiseLearner(8, 2, 2), g, float("inf"), progress=False)
    for lam in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="lam must be finite and >= 0"):
            train_ren_layerwise(RenLayerwiseLearner(8, 2, 2), g, 1.0, lam=lam, progress=False)
    # train_sgd checks the model against the grammar too, for the models that say their shape
    with pytest.raises(ValueError, match=r"model's \(v, s, L, n_classes\) must equal the grammar's"):
        train_sgd(hcnn(L=3), g, 16, n_test=16, progress=False)
    with pytest.raises(ValueError, match=r"model's \(v, d, n_classes\) must equal the grammar's, got \(8, 8, 8\)"):
        train_sgd(FullyConnected(8, 8, 8, 1, 8), g, 16, n_test=16, progress=False)


def test_diverged_runs_have_no_test_error():
    """argmax over NaN outputs picks an arbitrary class: a diverged run reports NaN, not a chance-level
    error, for SGD and for Ren's gradient-descent ridge."""
    g = rhmfast.RHM(4, 2, 2, 3, seed=1)
    model = HierarchicalCNN(4, 8, 2, 3, 4, norm="mf", activation="square", seed=0)
    record = train_sgd(model, g, 32, n_test=16, lr=1e3, batch_size=8, max_epochs=5, progress=False)
    assert record.stopped_by == "diverged" and math.isnan(record.final_test_error)
    ren = train_ren_layerwise(RenLayerwiseLearner(4, 2, 3), g, 2.0, n_test=16, gd_steps=200, gd_lr=100.0,
                              progress=False)
    assert ren.stopped_by == "diverged" and math.isnan(ren.final_test_error) and not ren.interrupted


def test_ren_stage_sizes_are_exact_for_a_fraction():
    """P = 91 over m + m^2 + m^3 = 39 (m = 3): the stages add up to P exactly (a float scale gives 92)."""
    g = rhmfast.RHM(9, 3, 2, 3, seed=0)
    assert sum(ren_stage_sizes(g, Fraction(91, 39)).values()) == 91


def test_ren_interruption_keeps_the_finished_stages(monkeypatch):
    import rhmfast.train.ren as train_module

    g = rhmfast.RHM(8, 2, 2, 3, seed=1)
    learner = RenLayerwiseLearner(8, 2, 3)
    calls = []
    real_fit = train_module.fit_ridge

    def fit_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train_module, "fit_ridge", fit_then_interrupt)
    record = train_ren_layerwise(learner, g, 10, n_test=64, progress=False)
    assert record.interrupted and record.stopped_by == "interrupted"
    assert [st["level"] for st in record.stages] == [3] and record.samples_seen == 80
    assert learner.W[2].abs().sum() > 0 and learner.W[1].abs().sum() == 0  # stage 2 left untouched


# ---- CUDA: the trainers keep data, heads and fits on the model's device -------------------------

@pytest.mark.cuda
def test_ridge_on_cuda_matches_cpu():
    torch.manual_seed(0)
    x = torch.randn(200, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (200,))
    for steps in (0, 50):
        gpu = fit_ridge(x.cuda(), y.cuda(), 3, 0.1, steps=steps, lr=0.3)
        assert gpu.is_cuda
        torch.testing.assert_close(gpu.cpu(), fit_ridge(x, y, 3, 0.1, steps=steps, lr=0.3))


@pytest.mark.cuda
def test_layerwise_and_ren_trainers_run_on_cuda():
    g = rhmfast.RHM(8, 2, 2, 3, seed=1)
    model = hcnn(L=3, width=16).cuda()
    record = train_layerwise_sgd(model, g, 128, n_test=128, hints=True, max_epochs=2, eval_every=1, progress=False)
    assert [st["layer"] for st in record.stages] == [1, 2, 3] and 0.0 <= record.final_test_error <= 1.0
    assert all(p.is_cuda for p in model.parameters())
    learner = RenLayerwiseLearner(8, 2, 3, features="tensor", seed=3).cuda()
    record = train_ren_layerwise(learner, g, 5, n_test=128, progress=False)
    cpu = train_ren_layerwise(RenLayerwiseLearner(8, 2, 3, features="tensor", seed=3), g, 5, n_test=128,
                              progress=False)
    assert all(w.is_cuda for w in learner.W)
    assert [st["n_samples"] for st in record.stages] == [st["n_samples"] for st in cpu.stages]
    for a, b in zip(record.stages, cpu.stages):
        assert a["posterior_distance"] == pytest.approx(b["posterior_distance"], rel=1e-5, abs=1e-9)
