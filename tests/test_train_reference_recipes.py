"""train_sgd's options from the 2024 reference library (pcsl-epfl/random-hierarchy-model: main.py, init.py,
training.py, measures.py): Adam and SGD take the steps of a hand-written torch loop, the cosine and warmup
schedules follow the reference's formulas, accumulation is one full-batch step, the curve carries the test
loss and accuracy, and a run resumed from a checkpoint (after a callback interrupt or a SIGKILL) ends with
the bits of the uninterrupted run; a checkpoint of another run is refused."""
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rhmfast
from rhmfast.models import HierarchicalCNN
from rhmfast.train import train_sgd
from rhmfast.train.end_to_end import sgd_record
from rhmfast.train.loop import make_optimizer, make_scheduler, reference_checkpoints
from rhmfast.train.record import BestTestLoss

GRAMMAR = dict(v=8, m=2, s=2, L=3, seed=1)  # pmax = 8 * 2^7 = 1024


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def hcnn(width=8, norm="std", seed=0):
    return HierarchicalCNN(8, width, 2, 3, 8, norm=norm, seed=seed)


def state_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def without_times(record):
    d = record.to_dict()
    for key in ("wall_time_s", "samples_per_s"):
        d.pop(key)
    return d


def hand_loop(model, g, n_train, n_test, *, batch_size, epochs, optimizer, lr_of_epoch=None, accumulation=False,
              seed_data=0, seed_order=0):
    """The reference's training.train written out in torch: train_sgd's data (split seed_data) and minibatch
    order (randperm of a CPU generator seeded seed_order), the learning rate of epoch e (1-based) set to
    lr_of_epoch(e) when given; with accumulation each loss is divided by the number of minibatches and the
    optimizer steps after the last one (training.py lines 14-29)."""
    (x, y), _ = g.split(n_train, n_test, seed=seed_data)
    gen = torch.Generator().manual_seed(seed_order)
    n_batches = math.ceil(n_train / batch_size)
    for epoch in range(1, epochs + 1):
        if lr_of_epoch is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_of_epoch(epoch)
        perm = torch.randperm(n_train, generator=gen)
        optimizer.zero_grad()
        for i, start in enumerate(range(0, n_train, batch_size)):
            idx = perm[start:start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if accumulation:
                (loss / n_batches).backward()
                if (i + 1) % n_batches == 0:
                    optimizer.step()
                    optimizer.zero_grad()
            else:
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()


# ---- optimizers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_sgd_and_adam_take_the_steps_of_a_hand_written_loop(optimizer):
    g = rhmfast.RHM(**GRAMMAR)
    lr, wd = (0.5, 1e-3) if optimizer == "sgd" else (0.01, 1e-3)
    model = hcnn()
    record = train_sgd(model, g, 200, n_test=64, batch_size=64, max_epochs=3, eval_every=1, lr=lr, momentum=0.9,
                       weight_decay=wd, optimizer=optimizer, seed_data=2, seed_order=3, progress=False)
    hand = hcnn()
    params = list(hand.parameters())
    # The reference: optim.SGD(lr, momentum) / optim.Adam(lr) (init.py init_training), no weight decay
    # there; ours passes weight_decay to both.
    opt = (torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd) if optimizer == "sgd"
           else torch.optim.Adam(params, lr=lr, weight_decay=wd))
    hand_loop(hand, g, 200, 64, batch_size=64, epochs=3, optimizer=opt, seed_data=2, seed_order=3)
    assert_same_state(state_of(model), state_of(hand))
    assert record.config.get("optimizer", "sgd") == optimizer
    assert ("optimizer" in record.config) == (optimizer != "sgd")  # defaults leave the config as it was


def test_momentum_is_unused_by_adam_and_the_lr_is_scaled_by_lr_scale():
    g = rhmfast.RHM(**GRAMMAR)
    runs = [hcnn(norm="mf") for _ in range(3)]
    for model, momentum in zip(runs[:2], (0.0, 0.9)):
        train_sgd(model, g, 128, n_test=32, max_epochs=2, lr=1e-3, momentum=momentum, optimizer="adam", progress=False)
    assert_same_state(state_of(runs[0]), state_of(runs[1]))
    opt = torch.optim.Adam(runs[2].parameters(), lr=1e-3 * 8)  # width 8, mean field: lr x H
    hand_loop(runs[2], g, 128, 32, batch_size=128, epochs=2, optimizer=opt)
    assert_same_state(state_of(runs[0]), state_of(runs[2]))


# ---- schedules ---------------------------------------------------------------------------------------

def reference_cosine(lr, t_max, epoch):
    """CosineAnnealingLR(T_max, eta_min=0.1 lr) in closed form (init.py line 205-207), the rate of the epoch
    after `epoch` scheduler steps."""
    eta_min = 0.1 * lr
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * epoch / t_max)) / 2


def reference_warmup(lr, warmup, max_iters, epoch):
    """init.py CosineWarmupLR.get_lr_factor (lines 25-29) times the base rate."""
    factor = 0.5 * (1 + np.cos(np.pi * epoch / max_iters))
    if epoch <= warmup:
        factor *= epoch * 1.0 / warmup
    return lr * factor


@pytest.mark.parametrize("scheduler, scheduler_time", [("cosine", None), ("cosine", 4), ("warmup", None),
                                                       ("warmup", 3)])
def test_schedules_give_the_reference_rates_epoch_by_epoch(scheduler, scheduler_time):
    max_epochs, lr = 10, 0.4
    opt = make_optimizer([torch.zeros(1, requires_grad=True)], "sgd", lr=lr, momentum=0.9, weight_decay=0.0)
    sched = make_scheduler(opt, scheduler=scheduler, scheduler_time=scheduler_time, cosine=False, lr=lr,
                           max_epochs=max_epochs)
    time_ = max_epochs if scheduler_time is None else scheduler_time  # main.py lines 45-46
    for epoch in range(max_epochs):  # the rate of epoch e+1; the reference steps once per epoch (training.py 31)
        want = (reference_cosine(lr, time_, epoch) if scheduler == "cosine"
                else reference_warmup(lr, time_, max_epochs, epoch))
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12, abs=1e-15), epoch
        opt.step()
        sched.step()
    if scheduler == "warmup":  # the reference's first epoch runs at rate 0
        assert reference_warmup(lr, time_, max_epochs, 0) == 0


@pytest.mark.parametrize("scheduler", ["cosine", "warmup"])
def test_train_sgd_schedules_equal_a_loop_with_the_reference_rates(scheduler):
    """mean field, width 8: the effective rate is lr x 8, and eta_min 0.1 x that (the reference multiplies
    args.lr by the width in init_model before init_training builds the schedule)."""
    g = rhmfast.RHM(**GRAMMAR)
    lr, epochs, time_ = 0.05, 6, 4
    model = hcnn(norm="mf")
    train_sgd(model, g, 128, n_test=32, batch_size=32, max_epochs=epochs, lr=lr, scheduler=scheduler,
              scheduler_time=time_, progress=False)
    hand = hcnn(norm="mf")
    base = lr * hand.lr_scale
    rate = ((lambda e: reference_cosine(base, time_, e - 1)) if scheduler == "cosine"
            else (lambda e: reference_warmup(base, time_, epochs, e - 1)))
    hand_loop(hand, g, 128, 32, batch_size=32, epochs=epochs, lr_of_epoch=rate,
              optimizer=torch.optim.SGD(hand.parameters(), lr=base, momentum=0.9))
    # warmup: the same rates bit for bit; cosine: torch's recursive rates differ from the closed form by ulps
    for key, value in state_of(hand).items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_rhmfast_cosine_is_kept_and_cannot_be_combined_with_a_scheduler():
    g = rhmfast.RHM(**GRAMMAR)
    opt = make_optimizer([torch.zeros(1, requires_grad=True)], "sgd", lr=1.0, momentum=0.0, weight_decay=0.0)
    sched = make_scheduler(opt, scheduler=None, scheduler_time=None, cosine=True, lr=1.0, max_epochs=4)
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR) and sched.T_max == 4 and sched.eta_min == 0
    with pytest.raises(ValueError, match="cosine"):
        train_sgd(hcnn(), g, 64, n_test=16, max_epochs=1, cosine=True, scheduler="cosine", progress=False)
    for bad in (dict(optimizer="rmsprop"), dict(scheduler="step"), dict(scheduler_time=0), dict(stop_check="x"),
                dict(accumulation=1), dict(eval_every=[]), dict(eval_every=[0, 2]), dict(checkpoint_every=2)):
        with pytest.raises(ValueError):
            train_sgd(hcnn(), g, 64, n_test=16, max_epochs=1, progress=False, **bad)


# ---- accumulation --------------------------------------------------------------------------------------

def test_accumulation_is_the_references_and_one_full_batch_step_an_epoch():
    g = rhmfast.RHM(**GRAMMAR)
    accumulated = hcnn()
    record = train_sgd(accumulated, g, 256, n_test=32, batch_size=64, max_epochs=3, eval_every=1, lr=0.5,
                       accumulation=True, progress=False)
    assert record.samples_seen == 3 * 256 and record.config["accumulation"] is True
    reference = hcnn()  # training.py: loss / accumulation, a step every accumulation = 256 // 64 minibatches
    hand_loop(reference, g, 256, 32, batch_size=64, epochs=3, accumulation=True,
              optimizer=torch.optim.SGD(reference.parameters(), lr=0.5, momentum=0.9))
    assert_same_state(state_of(accumulated), state_of(reference))
    full = hcnn()
    full_record = train_sgd(full, g, 256, n_test=32, batch_size=256, max_epochs=3, eval_every=1, lr=0.5,
                            progress=False)
    for key, value in state_of(full).items():
        torch.testing.assert_close(accumulated.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    assert [c["train_loss"] for c in record.curve] == pytest.approx([c["train_loss"] for c in full_record.curve],
                                                                     rel=1e-5)
    # Minibatches of unequal sizes: each weighted by its size, still the full-batch gradient.
    uneven, whole = hcnn(), hcnn()
    train_sgd(uneven, g, 250, n_test=32, batch_size=64, max_epochs=2, lr=0.5, accumulation=True, progress=False)
    train_sgd(whole, g, 250, n_test=32, batch_size=250, max_epochs=2, lr=0.5, progress=False)
    for key, value in state_of(whole).items():
        torch.testing.assert_close(uneven.state_dict()[key], value, rtol=1e-5, atol=1e-6)


# ---- evaluation ----------------------------------------------------------------------------------------

def test_curve_points_carry_test_loss_and_accuracy_and_the_start_point():
    g = rhmfast.RHM(**GRAMMAR)
    model, init = hcnn(), hcnn()
    record = train_sgd(model, g, 200, n_test=100, max_epochs=4, eval_every=[1, 3], eval_at_start=True, lr=0.5,
                       seed_data=4, progress=False)
    assert [c["epoch"] for c in record.curve] == [0, 1, 3, 4]  # the schedule, the start and the stopping epoch
    (x, y), (xt, yt) = g.split(200, 100, seed=4)
    for point in record.curve:
        assert {"epoch", "samples_seen", "train_loss", "test_error", "test_loss", "test_accuracy"} <= point.keys()
        assert point["test_accuracy"] == pytest.approx(1 - point["test_error"], abs=1e-12)
        assert round(point["test_error"] * 100) == pytest.approx(point["test_error"] * 100, abs=1e-9)
    with torch.no_grad():  # measures.test: sum of cross-entropies / total, (correct / total)
        start, last = record.curve[0], record.curve[-1]
        assert start["samples_seen"] == 0
        assert start["train_loss"] == pytest.approx(F.cross_entropy(init(x), y).item(), rel=1e-6)
        assert start["test_loss"] == pytest.approx(F.cross_entropy(init(xt), yt).item(), rel=1e-6)
        assert last["test_loss"] == pytest.approx(F.cross_entropy(model(xt), yt).item(), rel=1e-6)
        assert last["test_accuracy"] == (model(xt).argmax(1) == yt).sum().item() / 100
    assert record.final_test_error == last["test_error"]


def test_reference_print_schedule_and_the_threshold_checked_at_evaluations():
    # init.py init_loglinckpt(10, 100, fill=True): int(10^(k/10)) for k = 1..9 without repeats, then 10, 20, ...
    assert reference_checkpoints(10, 100, fill=True) == [1, 2, 3, 5, 6, 7] + list(range(10, 101, 10))
    assert reference_checkpoints(5, 17) == [5, 10, 15]
    g = rhmfast.RHM(**GRAMMAR)
    every = train_sgd(hcnn(), g, 64, n_test=16, max_epochs=6, eval_every=[3], loss_threshold=100.0, progress=False)
    at_eval = train_sgd(hcnn(), g, 64, n_test=16, max_epochs=6, eval_every=[3], loss_threshold=100.0,
                        stop_check="eval", progress=False)
    assert (every.stopped_by, [c["epoch"] for c in every.curve]) == ("loss_threshold", [1])
    assert (at_eval.stopped_by, [c["epoch"] for c in at_eval.curve]) == ("loss_threshold", [3])


def test_best_test_loss_tracks_the_references_best_model():
    g = rhmfast.RHM(**GRAMMAR)
    model = hcnn()
    states = {}
    best = BestTestLoss(model, then=lambda point: states.__setitem__(point["epoch"], state_of(model)))
    record = train_sgd(model, g, 200, n_test=64, max_epochs=6, eval_every=1, eval_at_start=True, lr=2.0,
                       callback=best, progress=False)
    losses = {c["epoch"]: c["test_loss"] for c in record.curve}
    epoch = min(losses, key=lambda e: (losses[e], e))  # the first epoch of the lowest loss (strict <)
    assert best.best["epoch"] == epoch and best.best["loss"] == losses[epoch]
    assert best.best["acc"] == record.curve[epoch]["test_accuracy"]
    if epoch == 0:
        assert best.best["model"] is None
    else:
        assert_same_state(best.best["model"], states[epoch])
    only = BestTestLoss(hcnn(), epochs=[2])
    train_sgd(only.model, g, 200, n_test=64, max_epochs=6, eval_every=1, lr=2.0, callback=only, progress=False)
    assert only.best["epoch"] == 2


# ---- checkpoints ---------------------------------------------------------------------------------------

RESUMED = {
    "sgd_cosine_start": dict(scheduler="cosine", eval_at_start=True, lr=0.5),
    "adam_warmup_accumulation": dict(optimizer="adam", scheduler="warmup", accumulation=True, lr=0.01),
    "online_eval_every_2": dict(online=True, eval_every=2, lr=0.5, cosine=True),
}


@pytest.mark.parametrize("name", list(RESUMED))
def test_a_run_resumed_after_a_callback_interrupt_ends_with_the_uninterrupted_bits(tmp_path, name):
    g = rhmfast.RHM(**GRAMMAR)
    args = dict(n_test=64, batch_size=48, max_epochs=5, eval_every=1, seed_data=1, seed_order=2, progress=False)
    args.update(RESUMED[name])
    model_a = hcnn()
    best_a = BestTestLoss(model_a)
    a = train_sgd(model_a, g, 200, callback=best_a, **args)
    assert a.stopped_by == "budget"

    path = tmp_path / "run.ckpt"
    model_b = hcnn()

    stopped = []

    def interrupt(point):
        if point["epoch"] >= 3:
            stopped.append(point["epoch"])
            raise KeyboardInterrupt

    b = train_sgd(model_b, g, 200, callback=BestTestLoss(model_b, then=interrupt), checkpoint=path,
                  checkpoint_every=1, **args)
    assert b.interrupted and path.exists() and not list(tmp_path.glob("*.tmp"))
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == stopped[0] - 1 and not saved["finished"]  # the callback raised before the checkpoint

    # The same (already trained) model object, or a fresh one: the checkpoint's weights are loaded either way.
    model_c = model_b if name == "sgd_cosine_start" else hcnn()
    best_c = BestTestLoss(model_c)
    c = train_sgd(model_c, g, 200, callback=best_c, checkpoint=path, checkpoint_every=1, **args)
    assert without_times(c) == without_times(a)
    assert_same_state(state_of(model_c), state_of(model_a))
    assert {k: v for k, v in best_c.best.items() if k != "model"} == {k: v for k, v in best_a.best.items()
                                                                        if k != "model"}
    if best_a.best["model"] is not None:
        assert_same_state(best_c.best["model"], best_a.best["model"])
    assert c.wall_time_s > 0

    # A finished checkpoint gives its record back without training.
    model_d = hcnn()
    d = train_sgd(model_d, g, 200, callback=BestTestLoss(model_d), checkpoint=path, **args)
    assert without_times(d) == without_times(a)
    assert_same_state(state_of(model_d), state_of(model_a))


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    g = rhmfast.RHM(**GRAMMAR)
    path = tmp_path / "other.ckpt"
    train_sgd(hcnn(), g, 64, n_test=16, max_epochs=2, checkpoint=path, checkpoint_every=1, progress=False)
    for changed, named in ((dict(lr=0.2), "config.lr: 0.1 there, 0.2 here"), (dict(seed_order=1), "seeds.order"),
                           (dict(optimizer="adam"), "config.optimizer"), (dict(max_epochs=3), "config.max_epochs")):
        with pytest.raises(ValueError, match="other.ckpt") as error:
            train_sgd(hcnn(), g, 64, n_test=16, **{"max_epochs": 2, **changed}, checkpoint=path, progress=False)
        assert named in str(error.value)
    with pytest.raises(ValueError, match="other.ckpt.*width"):
        train_sgd(hcnn(width=16), g, 64, n_test=16, max_epochs=2, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="other.ckpt.*callback"):
        train_sgd(hcnn(), g, 64, n_test=16, max_epochs=2, checkpoint=path, progress=False,
                  callback=BestTestLoss(hcnn()))
    with pytest.raises(ValueError, match="other.ckpt.*seeds.model"):
        train_sgd(hcnn(seed=1), g, 64, n_test=16, max_epochs=2, checkpoint=path, progress=False)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt"):
        train_sgd(hcnn(), g, 64, n_test=16, max_epochs=2, checkpoint=tmp_path / "junk.ckpt", progress=False)
    with pytest.raises(ValueError, match="train_sgd_distributed"):  # what train_sgd_distributed passes on
        sgd_record(hcnn(), g, 64, n_test=16, lr=0.1, momentum=0.9, weight_decay=0.0, batch_size=8, max_epochs=1,
                   cosine=False, loss_threshold=0.0, eval_every=1, online=False, seed_data=0, seed_order=0,
                   checkpoint=path, checkpoint_every=1)


KILLED = textwrap.dedent("""
    import sys, time
    import torch
    import rhmfast
    from rhmfast.models import HierarchicalCNN
    from rhmfast.train import train_sgd
    from rhmfast.train.record import BestTestLoss

    torch.set_num_threads(1)
    model = HierarchicalCNN(8, 8, 2, 3, 8, norm="std", seed=0)
    best = BestTestLoss(model, then=lambda point: time.sleep(0.3))  # slow enough to be killed mid-run
    train_sgd(model, rhmfast.RHM(v=8, m=2, s=2, L=3, seed=1), 200, n_test=64, batch_size=48, max_epochs=12,
              eval_every=1, lr=0.5, scheduler="cosine", seed_data=1, seed_order=2, progress=False, callback=best,
              checkpoint=sys.argv[1], checkpoint_every=1)
""")


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_bits(tmp_path):
    g = rhmfast.RHM(**GRAMMAR)
    args = dict(n_test=64, batch_size=48, max_epochs=12, eval_every=1, lr=0.5, scheduler="cosine", seed_data=1,
                seed_order=2, progress=False)
    path = tmp_path / "killed.ckpt"
    script = tmp_path / "run.py"
    script.write_text(KILLED)
    package_root = str(Path(rhmfast.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not path.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.02)
        time.sleep(0.35)  # usually one more checkpoint, maybe mid-write: the file is replaced atomically
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    saved = torch.load(path, weights_only=True)
    assert 1 <= saved["epoch"] < 12 and not saved["finished"]

    model_a = hcnn()
    best_a = BestTestLoss(model_a)
    a = train_sgd(model_a, g, 200, callback=best_a, **args)
    model_b = hcnn()
    best_b = BestTestLoss(model_b)
    b = train_sgd(model_b, g, 200, callback=best_b, checkpoint=path, checkpoint_every=1, **args)
    assert without_times(b) == without_times(a) and len(a.curve) == 12
    assert_same_state(state_of(model_b), state_of(model_a))
    assert best_b.best["epoch"] == best_a.best["epoch"] and best_b.best["loss"] == best_a.best["loss"]
    assert_same_state(best_b.best["model"], best_a.best["model"])


def test_order_and_replacement_reach_split_only_when_not_the_defaults():
    g = rhmfast.RHM(**GRAMMAR)
    calls = []
    split = g.split

    def recording_split(*args, **kwargs):
        calls.append({k: kwargs[k] for k in ("order", "replacement") if k in kwargs})
        return split(*args, **{k: v for k, v in kwargs.items() if k not in ("order", "replacement")})

    g.split = recording_split
    default = train_sgd(hcnn(), g, 64, n_test=16, max_epochs=1, progress=False)
    other = train_sgd(hcnn(), g, 64, n_test=16, max_epochs=1, order="pcsl", replacement=True, progress=False)
    assert calls == [{}, dict(order="pcsl", replacement=True)]
    assert "order" not in default.config and "replacement" not in default.config
    assert other.config["order"] == "pcsl" and other.config["replacement"] is True
    for online_only in (dict(order="pcsl"), dict(replacement=True), dict(eval_at_start=True)):
        with pytest.raises(ValueError, match="online|training set"):
            train_sgd(hcnn(), g, 64, n_test=16, max_epochs=1, online=True, progress=False, **online_only)
