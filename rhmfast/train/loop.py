"""What the trainers share: argument checks, evaluation, minibatch orders and the SGD loop over epochs."""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from rhmfast._checks import check_positive_int

EVAL_BATCH = 8192


def check_budget(**values) -> None:
    for name, value in values.items():
        check_positive_int(name, value)


def check_fits(model, grammar, what: str = "model") -> None:
    """The model's shape attributes (those it has of v, s, L, d = s^L, n_classes) equal the grammar's; a
    model without them (any user module) is taken as it is."""
    want = dict(v=grammar.v, s=grammar.s, L=grammar.L, d=grammar.input_dim, n_classes=grammar.n_classes)
    have = {k: getattr(model, k) for k in want if isinstance(getattr(model, k, None), int)}
    if any(have[k] != want[k] for k in have):
        keys = ", ".join(have)
        raise ValueError(f"rhmfast: the {what}'s ({keys}) must equal the grammar's, got "
                         f"{tuple(have.values())} and {tuple(want[k] for k in have)}")


@torch.no_grad()
def count_errors(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH) -> int:
    """Number of misclassified samples (argmax of the model's output)."""
    was_training = model.training
    model.eval()
    wrong = 0
    for start in range(0, x.shape[0], batch_size):
        wrong += (model(x[start:start + batch_size]).argmax(1) != y[start:start + batch_size]).sum().item()
    model.train(was_training)
    return wrong


def test_error(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH) -> float:
    """Fraction of misclassified samples (argmax of the model's output)."""
    return count_errors(model, x, y, batch_size) / max(1, x.shape[0])


def minibatches(n: int, batch_size: int, gen: torch.Generator, device="cpu"):
    # Drawn on the generator's device (the same order everywhere), moved to `device` once per epoch.
    order = torch.randperm(n, generator=gen).to(device)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def whole_batch(loss, inputs):
    """The minibatch's mean loss (a tensor: no host sync) and size, for a process that holds all of it
    (``run_epochs``' default)."""
    return loss.detach(), inputs.shape[0]


def run_epochs(params, batches_of_epoch, loss_fn, *, lr, momentum, weight_decay, cosine, max_epochs,
            loss_threshold, evaluate, record, eval_every, progress, desc, callback, combine=whole_batch,
            labels=None):
    """The SGD loop shared by the trainers: epochs of minibatches, cosine schedule, stop on the mean train
    loss of an epoch falling below loss_threshold or on max_epochs; evaluate() every eval_every epochs.
    Appends to record.curve (each point also carrying the dict `labels`, e.g. the layer a layerwise stage
    trains); returns the last curve point. KeyboardInterrupt propagates to the caller.

    combine(loss, inputs), called between backward and the optimizer step, returns the minibatch's mean
    loss (float or 0-dim tensor) and size: data-parallel training (``rhmfast.studies.distributed``) sums the
    ranks' gradients there. The epoch's loss is summed in float64 where the losses are and read once per
    epoch (one host sync an epoch on a GPU, not one a step); the bits are those of a Python float sum."""
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max_epochs) if cosine else None
    point = None
    with tqdm(range(1, max_epochs + 1), desc=desc, disable=not progress, leave=False) as bar:  # closed on Ctrl-C too
        for epoch in bar:
            total, count = None, 0
            for inputs, targets in batches_of_epoch():
                loss = loss_fn(inputs, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                mean_loss, n = combine(loss, inputs)
                optimizer.step()
                term = torch.as_tensor(mean_loss, dtype=torch.float64) * n
                total = term if total is None else total + term
                count += n
                record.samples_seen += n
            if scheduler is not None:
                scheduler.step()
            train_loss = total.item() / count
            if not math.isfinite(train_loss):
                record.stopped_by = "diverged"
            elif train_loss < loss_threshold:
                record.stopped_by = "loss_threshold"
            elif epoch == max_epochs:
                record.stopped_by = "budget"
            if epoch % eval_every == 0 or record.stopped_by:
                point = dict(epoch=epoch, samples_seen=record.samples_seen, train_loss=train_loss,
                             test_error=evaluate(), **(labels or {}))
                record.curve.append(point)
                bar.set_postfix(loss=f"{train_loss:.2e}", err=f"{point['test_error']:.3f}")
                if callback is not None:
                    callback(point)
            if record.stopped_by:
                break
    return point
