"""End-to-end baselines on a label hierarchy: every parameter of a model trained jointly with Adam, on the
top level's labels only or on all labels (multi-task), the comparisons of Daniely's layerwise learner
(``rhmfast.train.residual``)."""
from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from rhmfast._checks import check_choice, check_int, check_positive_int
from rhmfast.models import ResidualLayerwiseNet, ShallowMLP, device_of
from rhmfast.train.loop import EVAL_BATCH, minibatches
from rhmfast.train.record import RunRecord, finish
from rhmfast.train.residual import LOSSES, check_float, hierarchy_config, net_config

TARGETS = ("top", "all")


def train_hierarchy_end_to_end(model, hierarchy, n_train: int, *, labels: str = "top", loss: str = "logistic",
                               lr: float = 1e-3, batch_size: int = 128, epochs: int = 100,
                               weight_decay: float = 0.0, loss_threshold: float = 1e-3, eval_every: int = 10,
                               n_test: int = 4096, seed_data: int = 0, seed_order: int = 0,
                               progress: bool = True) -> RunRecord:
    """Train ``model`` end to end on n_train samples for up to ``epochs`` epochs of Adam (lr, weight_decay,
    minibatches of batch_size from seed_order), on ``loss`` (see ``rhmfast.train.residual.LOSSES``) of the
    margins of the top level's labels (labels="top") or of every label (labels="all", averaged over all).

    model: a ``ResidualLayerwiseNet`` with features="trained" and write="tanh" (so that the top labels'
    gradient reaches every block; its scores [n, n_labels] are sliced), or a ``ShallowMLP`` whose n_out is
    the top level's size ("top") or n_labels ("all"). Training stops early once an epoch's mean train loss
    falls below loss_threshold. The test error (the mean over the top level's labels of the fraction of
    wrong signs) is measured every eval_every epochs and at the end; ``final_test_error`` is the last.
    Samples: the test set is indices 0..n_test-1 of the stream seed_data, the training set the n_train
    after it (as ``train_residual_layerwise``)."""
    top = hierarchy.levels[-1]
    top_lo, top_hi = int(top[0]), int(top[-1]) + 1
    labels = check_choice("labels", labels, TARGETS)
    lo = 0 if labels == "all" else top_lo
    if isinstance(model, ResidualLayerwiseNet):
        if model.features != "trained" or model.write != "tanh":
            raise ValueError("rhmfast: end-to-end training of a ResidualLayerwiseNet needs features='trained' and "
                             f"write='tanh' (gradients through every block), got features={model.features!r}, "
                             f"write={model.write!r}")
        if (model.d, model.n_labels) != (hierarchy.d, hierarchy.n_labels):
            raise ValueError(f"rhmfast: the net (d={model.d}, n_labels={model.n_labels}) must be built for the "
                             f"hierarchy (d={hierarchy.d}, n_labels={hierarchy.n_labels})")
        outputs, config = slice(lo, top_hi), dict(model="ResidualLayerwiseNet", **net_config(model))
    elif isinstance(model, ShallowMLP):
        want = hierarchy.n_labels if labels == "all" else top_hi - top_lo
        if (model.d, model.n_out) != (hierarchy.d, want):
            raise ValueError(f"rhmfast: a ShallowMLP trained on labels={labels!r} needs d={hierarchy.d} and "
                             f"n_out={want}, got d={model.d}, n_out={model.n_out}")
        outputs, config = slice(None), dict(model="ShallowMLP", width=model.width, activation=model.activation)
    else:
        raise TypeError(f"rhmfast: model must be a ResidualLayerwiseNet or a ShallowMLP, got {type(model).__name__}")
    loss_fn = LOSSES[check_choice("loss", loss, tuple(LOSSES))]
    check_float("lr", lr, positive=True)
    check_float("weight_decay", weight_decay)
    check_float("loss_threshold", loss_threshold)
    for name, value in (("n_train", n_train), ("batch_size", batch_size), ("epochs", epochs),
                        ("eval_every", eval_every), ("n_test", n_test)):
        check_positive_int(name, value)
    seed_data = check_int("seed_data", seed_data, 0, (1 << 64) - 1)
    seed_order = check_int("seed_order", seed_order, 0)

    record = RunRecord("train_hierarchy_end_to_end",
                       dict(**config, **hierarchy_config(hierarchy), labels=labels, n_train=n_train, loss=loss,
                            optimizer="adam", lr=lr, batch_size=batch_size, epochs=epochs,
                            weight_decay=weight_decay, loss_threshold=loss_threshold, n_test=n_test),
                       dict(data=seed_data, order=seed_order, model=model.seed))
    device = device_of(model)
    x_test, y_test = (t.to(device) for t in hierarchy.sample(n_test, seed=seed_data, start=0))
    x, y = hierarchy.sample(n_train, seed=seed_data, start=n_test)
    x, targets = x.to(device), y[:, lo:top_hi].to(device=device, dtype=torch.float32)
    top_test = y_test[:, top_lo:top_hi]
    order = torch.Generator().manual_seed(seed_order)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr,
                                 weight_decay=weight_decay)

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        wrong = 0
        for a in range(0, n_test, EVAL_BATCH):
            scores = model(x_test[a:a + EVAL_BATCH])[:, outputs][:, top_lo - lo:]
            wrong += ((scores >= 0) != (top_test[a:a + EVAL_BATCH] > 0)).sum().item()
        model.train()
        return wrong / (n_test * (top_hi - top_lo))

    started = time.perf_counter()
    was_training = model.training
    model.train()
    error = float("nan")
    try:
        with tqdm(range(1, epochs + 1), desc=f"end to end ({labels})", disable=not progress, leave=False) as bar:
            for epoch in bar:
                total = torch.zeros((), dtype=torch.float64, device=device)
                for batch in minibatches(n_train, batch_size, order, device):
                    value = loss_fn(targets[batch] * model(x[batch])[:, outputs]).mean()
                    optimizer.zero_grad(set_to_none=True)
                    value.backward()
                    optimizer.step()
                    total += value.detach().double() * batch.numel()
                record.samples_seen += n_train
                train_loss = total.item() / n_train
                if not math.isfinite(train_loss):
                    record.stopped_by = "diverged"
                    break
                done = train_loss < loss_threshold or epoch == epochs
                if epoch % eval_every == 0 or done:
                    error = evaluate()
                    record.curve.append(dict(epoch=epoch, samples_seen=record.samples_seen, train_loss=train_loss,
                                             test_error=error))
                    bar.set_postfix(loss=f"{train_loss:.2e}", err=f"{error:.3f}")
                if done:
                    record.stopped_by = "loss_threshold" if train_loss < loss_threshold else "max_epochs"
                    break
    except KeyboardInterrupt:
        record.interrupted, record.stopped_by = True, "interrupted"
    model.train(was_training)
    if record.stopped_by in ("loss_threshold", "max_epochs"):
        record.final_test_error = error
    return finish(record, started)
