"""Layerwise training of ``ResidualLayerwiseNet`` on a label hierarchy (Daniely 2026): level by level, each
stage on fresh samples, only the stage's block learning."""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rhmfast._checks import check_choice, check_int, check_positive_int
from rhmfast.models._common import device_of
from rhmfast.train.loop import EVAL_BATCH, minibatches
from rhmfast.train.record import RunRecord, finish

SOLVERS = ("auto", "ridge", "adam")
RIDGE_CHUNK = 8192  # samples per pass when accumulating a ridge solve's Gram matrix

LOSSES = {
    "logistic": lambda margin: F.softplus(-margin),
    "hinge": lambda margin: F.relu(1.0 - margin),
    "square": lambda margin: (1.0 - margin).square(),  # = (score - y)^2 for y = +-1
}


def hierarchy_config(hierarchy) -> dict:
    return dict(hierarchy=type(hierarchy).__name__, d=hierarchy.d, level_sizes=[len(v) for v in hierarchy.levels],
                fan_in=getattr(hierarchy, "fan_in", None), gate=getattr(hierarchy, "gate", None),
                wiring=getattr(hierarchy, "wiring", None), seed_hierarchy=getattr(hierarchy, "seed", None))


@torch.no_grad()
def fit_readout_ridge(features, targets: torch.Tensor, penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The read-out (U [k, q], c [k]) minimising mean_n |U phi_n + c - t_n|^2 + lam |U|^2, with lam = penalty
    times the mean variance of the features (so one penalty suits every activation and scale); c is not
    penalised. features(lo, hi) returns phi [hi - lo, q] of samples lo..hi-1; targets [n, k].

    n >= q: the q x q normal equations, their Gram matrix summed over chunks of samples in float64 (the
    n x q matrix never exists at once). n < q: the same solution through the n x n kernel matrix,
    U = Phi_c^T (Phi_c Phi_c^T + n lam I)^-1 (t - mean t) with Phi_c the centred features, which costs
    n^2 q instead of n q^2 + q^3. Both solved by Cholesky in float64."""
    n = targets.shape[0]
    t = targets.double()
    t_centred = t - t.mean(0)
    first = features(0, min(n, RIDGE_CHUNK))
    q, device = first.shape[1], first.device
    if n < q:
        phi = (first if n <= RIDGE_CHUNK else features(0, n)).double()
        mean = phi.mean(0)
        phi -= mean
        kernel = phi @ phi.t()
        lam = penalty * max(kernel.diagonal().sum().item() / (n * q), 1e-300)
        kernel.diagonal().add_(n * lam)
        u = phi.t() @ torch.cholesky_solve(t_centred, torch.linalg.cholesky(kernel))
        return u.t(), t.mean(0) - mean @ u
    gram = torch.zeros(q, q, dtype=torch.float64, device=device)
    sums = torch.zeros(q, dtype=torch.float64, device=device)
    cross = torch.zeros(q, t.shape[1], dtype=torch.float64, device=device)
    for lo in range(0, n, RIDGE_CHUNK):
        phi = first if lo == 0 else features(lo, min(n, lo + RIDGE_CHUNK))
        gram += (phi.t() @ phi).double()  # float32 products per chunk, summed in float64
        sums += phi.double().sum(0)
        cross += phi.double().t() @ t_centred[lo:lo + phi.shape[0]]
    mean = sums / n
    covariance = gram / n - torch.outer(mean, mean)
    lam = penalty * max(covariance.diagonal().mean().item(), 1e-300)
    covariance.diagonal().add_(lam)
    u = torch.cholesky_solve(cross / n, torch.linalg.cholesky(covariance))
    return u.t(), t.mean(0) - mean @ u


@torch.no_grad()
def level_errors(net, x: torch.Tensor, y: torch.Tensor, level: int | None = None):
    """Per level, the mean over its labels of the fraction of samples whose score has the wrong sign, every
    block reading the estimates the network itself wrote (not the true labels); x, y: int8 +-1. With
    ``level``, that level's error only (the blocks above it are not run)."""
    lo, hi = (0, net.n_labels) if level is None else (net.offsets[level - 1], net.offsets[level])
    wrong = torch.zeros(hi - lo, dtype=torch.float64)
    for start in range(0, x.shape[0], EVAL_BATCH):
        xb = x[start:start + EVAL_BATCH]
        scores = net(xb) if level is None else net.block_scores(level, net.stream(xb, level - 1))
        target = y[start:start + EVAL_BATCH, lo:hi].to(scores.device)
        wrong += ((scores >= 0) != (target > 0)).sum(0).double().cpu()
    wrong /= max(1, x.shape[0])
    if level is not None:
        return wrong.mean().item()
    return [wrong[a:b].mean().item() for a, b in zip(net.offsets[:-1], net.offsets[1:])]


def net_config(net) -> dict:
    return dict(width=net.width, beta=net.beta, activation=net.activation, features=net.features, write=net.write)


def train_residual_layerwise(net, hierarchy, n_per_stage, *, loss: str = "square", solver: str = "auto",
                             ridge: float = 1e-2, lr: float = 0.02, batch_size: int = 256, epochs: int = 30,
                             weight_decay: float = 0.0, n_test: int = 4096, seed_data: int = 0,
                             seed_order: int = 0, progress: bool = True) -> RunRecord:
    """Stages i = 1..r: draw ``n_per_stage`` fresh samples (an int, or one per level), run the frozen
    blocks below to write their estimates into the stream, and train block i on level i's labels (targets
    +-1); every other parameter stays bit-identical.

    ``solver="ridge"`` (frozen random features and the square loss only): the read-out in closed form,
    the minimiser of the square loss plus ``ridge`` times the features' mean variance times |U|^2
    (``fit_readout_ridge``), the standard random-features estimator. ``solver="adam"``: ``epochs`` epochs of
    Adam (lr, weight_decay; minibatches of batch_size drawn from seed_order) on ``loss`` of the margin
    m = y * score: "logistic" log(1 + e^-m), "hinge" max(0, 1 - m), "square" (1 - m)^2, averaged over
    samples and labels; the read-out learns, and the block's features too when ``net.features ==
    "trained"``. Adam is this library's choice: its steps do not depend on the features' scale. "auto":
    ridge where it applies, Adam elsewhere. With frozen features a stage's features are computed once.

    The test set and the stages' samples are disjoint index ranges of the sample stream seed_data (test
    first, then stage 1, 2, ...). Each stage records level, n_samples, its train loss (the mean loss over
    the stage's samples after training) and its level's test error (mean over the level's labels of the
    fraction of wrong signs, with the estimates below written by the network itself);
    ``final_test_error`` is the top level's. Ctrl-C returns the finished stages with interrupted=True and
    no final test error. Data is moved to the device of the network's parameters."""
    sizes = _stage_sizes(net, hierarchy, n_per_stage)
    loss_fn = LOSSES[check_choice("loss", loss, tuple(LOSSES))]
    solver = check_choice("solver", solver, SOLVERS)
    if solver == "auto":
        solver = "ridge" if net.features == "random" and loss == "square" else "adam"
    if solver == "ridge" and (net.features != "random" or loss != "square"):
        raise ValueError(f"rhmfast: solver='ridge' fits frozen random features (features='random') with the "
                         f"square loss, got features={net.features!r}, loss={loss!r}; use solver='adam'")
    check_float("ridge", ridge, positive=True)
    check_float("lr", lr, positive=True)
    check_float("weight_decay", weight_decay)
    for name, value in (("batch_size", batch_size), ("epochs", epochs), ("n_test", n_test)):
        check_positive_int(name, value)
    seed_data = check_int("seed_data", seed_data, 0, (1 << 64) - 1)
    seed_order = check_int("seed_order", seed_order, 0)
    steps = dict(ridge=ridge) if solver == "ridge" else dict(lr=lr, batch_size=batch_size, epochs=epochs,
                                                            weight_decay=weight_decay)
    record = RunRecord("train_residual_layerwise",
                       dict(model="ResidualLayerwiseNet", **hierarchy_config(hierarchy), **net_config(net),
                            n_per_stage=sizes, loss=loss, solver=solver, **steps, n_test=n_test),
                       dict(data=seed_data, order=seed_order, model=net.seed))
    device = device_of(net)
    x_test, y_test = hierarchy.sample(n_test, seed=seed_data, start=0)
    x_test, y_test = x_test.to(device), y_test.to(device)
    order = torch.Generator().manual_seed(seed_order)
    started = time.perf_counter()
    position = n_test
    was_training = net.training
    net.train()
    try:
        with tqdm(range(1, net.r + 1), desc="residual layerwise", disable=not progress, leave=False) as bar:
            for level in bar:
                n = sizes[level - 1]
                x, y = hierarchy.sample(n, seed=seed_data, start=position)
                position += n
                lo, hi = net.offsets[level - 1], net.offsets[level]
                targets = y[:, lo:hi].to(device=device, dtype=torch.float32)
                with torch.no_grad():
                    stream = net.stream(x.to(device), level - 1)  # the frozen blocks below
                if solver == "ridge":
                    readout = net.readouts[level - 1]
                    weight, bias = fit_readout_ridge(lambda a, b: net.block_features(level, stream[a:b]), targets,
                                                     ridge)
                    with torch.no_grad():
                        readout.weight.copy_(weight)
                        readout.bias.copy_(bias)
                else:
                    _fit_adam(net, level, stream, targets, loss_fn, lr, weight_decay, batch_size, epochs, order)
                record.samples_seen += n
                with torch.no_grad():
                    train_loss = sum(loss_fn(targets[a:a + EVAL_BATCH] * net.block_scores(level, stream[a:a + EVAL_BATCH]))
                                     .sum().item() for a in range(0, n, EVAL_BATCH)) / targets.numel()
                if not math.isfinite(train_loss):
                    record.stopped_by = "diverged"
                    break
                net.eval()
                error = level_errors(net, x_test, y_test, level)
                net.train()
                record.stages.append(dict(level=level, n_samples=n, train_loss=train_loss, test_error=error))
                record.curve.append(dict(stage=level, samples_seen=record.samples_seen, train_loss=train_loss,
                                         test_error=error))
                bar.set_postfix(level=level, err=f"{error:.3f}")
    except KeyboardInterrupt:
        record.interrupted, record.stopped_by = True, "interrupted"
    net.train(was_training)
    if not record.interrupted and record.stopped_by != "diverged":
        record.stopped_by = "done"
        record.final_test_error = record.stages[-1]["test_error"]  # the top level's
    return finish(record, started)


def _fit_adam(net, level, stream, targets, loss_fn, lr, weight_decay, batch_size, epochs, order) -> None:
    """Adam on block ``level``'s parameters; frozen features are computed once."""
    n = targets.shape[0]
    with torch.no_grad():
        cached = net.block_features(level, stream) if net.features == "random" else None
    optimizer = torch.optim.Adam(net.block_parameters(level), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        for batch in minibatches(n, batch_size, order, stream.device):
            if cached is not None:
                scores = net.readouts[level - 1](cached[batch])
            else:
                scores = net.block_scores(level, stream[batch])
            value = loss_fn(targets[batch] * scores).mean()
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()


def _stage_sizes(net, hierarchy, n_per_stage) -> list[int]:
    level_sizes = [len(v) for v in hierarchy.levels]
    if (net.d, net.level_sizes) != (hierarchy.d, level_sizes):
        raise ValueError(f"rhmfast: hierarchy (d={hierarchy.d}, levels {level_sizes}) must be the one the net was "
                         f"built for (d={net.d}, levels {net.level_sizes})")
    if isinstance(n_per_stage, (list, tuple)):
        if len(n_per_stage) != net.r:
            raise ValueError(f"rhmfast: n_per_stage must be an int or {net.r} ints (one per level), "
                             f"got {n_per_stage!r}")
        return [check_positive_int(f"n_per_stage[{i}]", n) for i, n in enumerate(n_per_stage)]
    return [check_positive_int("n_per_stage", n_per_stage)] * net.r


def check_float(name: str, value, positive: bool = False) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
            or (positive and value == 0)):
        raise ValueError(f"rhmfast: {name} must be a finite float {'>' if positive else '>='} 0, got {value!r}")
    return float(value)
