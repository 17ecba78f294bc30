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
def level_errors(net, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Per level, the mean over its labels of the fraction of samples whose score has the wrong sign, every
    block reading the estimates the network itself wrote (not the true labels). x, y: int8 +-1."""
    wrong = torch.zeros(net.n_labels, dtype=torch.float64)
    for start in range(0, x.shape[0], EVAL_BATCH):
        scores = net(x[start:start + EVAL_BATCH])
        target = y[start:start + EVAL_BATCH].to(scores.device)
        wrong += ((scores >= 0) != (target > 0)).sum(0).double().cpu()
    wrong /= max(1, x.shape[0])
    return [wrong[lo:hi].mean().item() for lo, hi in zip(net.offsets[:-1], net.offsets[1:])]


def train_residual_layerwise(net, hierarchy, n_per_stage, *, loss: str = "logistic", lr: float = 0.02,
                             batch_size: int = 256, epochs: int = 30, weight_decay: float = 0.0,
                             n_test: int = 4096, seed_data: int = 0, seed_order: int = 0,
                             progress: bool = True) -> RunRecord:
    """Stages i = 1..r: draw ``n_per_stage`` fresh samples (an int, or one per level), run the frozen
    blocks below to write their estimates into the stream, and train block i (its read-out; its features
    too when ``net.features == "trained"``) on level i's labels (targets +-1) for ``epochs`` epochs of Adam
    (lr, weight_decay; minibatches of batch_size drawn from seed_order) on ``loss`` of the margin y * score:
    "logistic" log(1 + e^-m), "hinge" max(0, 1 - m), "square" (1 - m)^2, averaged over samples and labels.
    Adam is this library's choice: its steps do not depend on the features' scale (beta, activation). Every
    other parameter stays bit-identical. With frozen random features, the stage's features are computed
    once (they do not change), so an epoch costs only the read-out.

    The test set and the stages' samples are disjoint index ranges of the sample stream seed_data (test
    first, then stage 1, 2, ...). Each stage records level, n_samples, its last epoch's train loss and its
    level's test error (mean over the level's labels of the fraction of wrong signs, with the estimates
    below written by the network itself); ``final_test_error`` is the top level's. Ctrl-C returns the
    finished stages with interrupted=True and no final test error. Data is moved to the device of the
    network's parameters."""
    level_sizes = [len(v) for v in hierarchy.levels]
    if (net.d, net.level_sizes) != (hierarchy.d, level_sizes):
        raise ValueError(f"rhmfast: hierarchy (d={hierarchy.d}, levels {level_sizes}) must be the one the net was "
                         f"built for (d={net.d}, levels {net.level_sizes})")
    if isinstance(n_per_stage, (list, tuple)):
        if len(n_per_stage) != net.r:
            raise ValueError(f"rhmfast: n_per_stage must be an int or {net.r} ints (one per level), "
                             f"got {n_per_stage!r}")
        sizes = [check_positive_int(f"n_per_stage[{i}]", n) for i, n in enumerate(n_per_stage)]
    else:
        sizes = [check_positive_int("n_per_stage", n_per_stage)] * net.r
    loss_fn = LOSSES[check_choice("loss", loss, tuple(LOSSES))]
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"rhmfast: {name} must be a finite float >= 0, got {value!r}")
    if lr == 0:
        raise ValueError(f"rhmfast: lr must be > 0, got {lr!r}")
    for name, value in (("batch_size", batch_size), ("epochs", epochs), ("n_test", n_test)):
        check_positive_int(name, value)
    seed_data = check_int("seed_data", seed_data, 0, (1 << 64) - 1)
    seed_order = check_int("seed_order", seed_order, 0)

    record = RunRecord("train_residual_layerwise",
                       dict(model="ResidualLayerwiseNet", **hierarchy_config(hierarchy), width=net.width,
                            beta=net.beta, activation=net.activation, features=net.features, write=net.write,
                            n_per_stage=sizes, loss=loss, optimizer="adam", lr=lr, batch_size=batch_size,
                            epochs=epochs, weight_decay=weight_decay, n_test=n_test),
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
                    cached = net.block_features(level, stream) if net.features == "random" else None
                params = net.block_parameters(level)
                optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
                for _ in range(epochs):
                    total = torch.zeros((), dtype=torch.float64, device=device)
                    for batch in minibatches(n, batch_size, order, device):
                        if cached is not None:
                            scores = net.readouts[level - 1](cached[batch])
                        else:
                            scores = net.block_scores(level, stream[batch])
                        value = loss_fn(targets[batch] * scores).mean()
                        optimizer.zero_grad(set_to_none=True)
                        value.backward()
                        optimizer.step()
                        total += value.detach().double() * batch.numel()
                    record.samples_seen += n
                train_loss = total.item() / n
                if not math.isfinite(train_loss):
                    record.stopped_by = "diverged"
                    break
                net.eval()
                error = level_errors(net, x_test, y_test)[level - 1]
                net.train()
                stage = dict(level=level, n_samples=n, train_loss=train_loss, test_error=error)
                record.stages.append(stage)
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
