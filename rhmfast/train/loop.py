"""What the trainers share: argument checks, evaluation, minibatch orders, optimizers and learning-rate
schedules, and the SGD loop over epochs."""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rhmfast._checks import check_choice, check_positive_int

EVAL_BATCH = 8192
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = (None, "cosine", "warmup")
STOP_CHECKS = ("epoch", "eval")


def check_budget(**values) -> None:
    for name, value in values.items():
        check_positive_int(name, value)


def check_eval_schedule(eval_every):
    """eval_every: an int >= 1 (every that many epochs), or a collection of epochs (ints >= 1), returned
    as a sorted list without repeats."""
    if isinstance(eval_every, (numbers.Integral, str, bytes)):
        return check_positive_int("eval_every", eval_every)
    try:
        epochs = sorted(set(eval_every))
    except TypeError:
        raise ValueError(f"rhmfast: eval_every must be an int >= 1 or a collection of epochs (ints >= 1), "
                         f"got {eval_every!r}") from None
    if not epochs:
        raise ValueError("rhmfast: eval_every must name at least one epoch, got an empty collection")
    for epoch in epochs:
        check_positive_int("every epoch of eval_every", epoch)
    return epochs


def is_eval_epoch(epoch: int, eval_every) -> bool:
    """Whether the schedule eval_every (an int, or a collection of epochs) evaluates after this epoch."""
    return epoch % eval_every == 0 if isinstance(eval_every, int) else epoch in eval_every


def reference_checkpoints(step: int, end: int, fill: bool = False) -> list[int]:
    """The epochs of the 2024 reference library's checkpoint iterator (init.py ``init_loglinckpt``): the
    multiples of step up to end, preceded with fill=True by up to 9 log-spaced epochs below step (the
    integer parts of step^(k/10), k = 1..9, computed as the reference does, by repeated multiplication,
    repeats dropped). Its main.py prints (and evaluates) at ``reference_checkpoints(print_freq, max_epochs,
    fill=print_freq >= 10)``; pass that list as eval_every."""
    check_positive_int("step", step)
    epochs = []
    if fill:
        space, value = step ** (1.0 / 10), 1.0
        for _ in range(9):
            value *= space
            if int(value) not in epochs:
                epochs.append(int(value))
    epochs.extend(range(step, end + 1, step))
    return epochs


def check_fits(model, grammar, what: str = "model") -> None:
    """The model's shape attributes (those it has of v, s, L, d, n_classes) equal the data's: v its input
    vocabulary (``input_vocab``: the grammar's v, plus a blank or mask token where the data has one), s its
    patch size (``patch_size``: s, or s(s0+1) for the sparse RHM), d its input length, n_classes its number
    of targets. A model without them (any user module) is taken as it is."""
    want = dict(v=getattr(grammar, "input_vocab", grammar.v), s=getattr(grammar, "patch_size", grammar.s),
                L=grammar.L, d=grammar.input_dim, n_classes=grammar.n_classes)
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


@torch.no_grad()
def evaluate_set(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH) -> dict:
    """One pass over a labelled set in eval mode: dict(error, loss, accuracy). error is ``test_error``'s
    number (the same bits); loss the mean cross-entropy, the per-chunk float32 sums added in float64 and
    divided by the set's size; accuracy the fraction classified right, (n - wrong) / n (the 2024 reference's
    measures.test, which returns loss and accuracy the same way). One host sync in all."""
    was_training = model.training
    model.eval()
    wrong = torch.zeros((), dtype=torch.int64, device=x.device)
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        out, target = model(x[start:start + batch_size]), y[start:start + batch_size]
        wrong += (out.argmax(1) != target).sum()
        loss += F.cross_entropy(out, target, reduction="sum").to(torch.float64)
    model.train(was_training)
    n = x.shape[0]
    wrong, loss = int(wrong.item()), loss.item()
    return dict(error=wrong / max(1, n), loss=loss / n if n else float("nan"),
                accuracy=(n - wrong) / max(1, n))


def minibatches(n: int, batch_size: int, gen: torch.Generator, device="cpu"):
    # Drawn on the generator's device (the same order everywhere), moved to `device` once per epoch.
    order = torch.randperm(n, generator=gen).to(device)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def whole_batch(loss, inputs):
    """The minibatch's mean loss (a tensor: no host sync) and size, for a process that holds all of it
    (``run_epochs``' default)."""
    return loss.detach(), inputs.shape[0]


def make_optimizer(params, name: str, *, lr: float, momentum: float, weight_decay: float):
    """"sgd": torch SGD (lr, momentum, weight_decay); "adam": torch Adam (lr, weight_decay as Adam's L2
    term; momentum unused), as the 2024 reference's init.py ``init_training`` builds them (it has no weight
    decay: 0 here gives its optimizers exactly); "adamw": torch AdamW (lr, weight_decay decoupled from the
    gradient; torch's default betas (0.9, 0.999) and eps; momentum unused)."""
    check_choice("optimizer", name, OPTIMIZERS)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def warmup_factor(epoch: int, warmup: int, max_epochs: int) -> float:
    """The reference's CosineWarmupLR factor (init.py): 0.5 (1 + cos(pi epoch / max_epochs)), times
    epoch / warmup while epoch <= warmup. Epoch 0 (the first epoch's rate) gives 0."""
    factor = 0.5 * (1 + np.cos(np.pi * epoch / max_epochs))
    if epoch <= warmup:
        factor *= epoch * 1.0 / warmup
    return float(factor)


def make_scheduler(optimizer, *, scheduler, scheduler_time, cosine: bool, lr: float, max_epochs: int):
    """The learning-rate schedule, stepped once at the end of every epoch (or None: a constant rate).

    - cosine=True (rhmfast's own, the default False): CosineAnnealingLR(T_max=max_epochs), eta_min 0.
    - scheduler="cosine" (the reference's): CosineAnnealingLR(T_max=scheduler_time, eta_min=0.1 lr), lr the
      effective (lr_scale-multiplied) rate, as the reference's eta_min = 0.1*args.lr after init_model
      multiplied args.lr by the width. Past T_max the torch schedule rises again, as in the reference.
    - scheduler="warmup" (the reference's CosineWarmupLR): lr * warmup_factor(e, scheduler_time, max_epochs)
      for epoch e+1 (so 0 for the first epoch).
    scheduler_time None means max_epochs (the reference's main.py)."""
    check_choice("scheduler", scheduler, SCHEDULERS)
    if cosine and scheduler is not None:
        raise ValueError(f"rhmfast: cosine=True (rhmfast's cosine schedule, eta_min 0) and scheduler={scheduler!r} "
                         "both choose a schedule; pass only one")
    if cosine:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max_epochs)
    time_ = max_epochs if scheduler_time is None else scheduler_time
    if scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=time_, eta_min=0.1 * lr)
    if scheduler == "warmup":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: warmup_factor(e, time_, max_epochs))
    return None


def curve_metrics(result) -> dict:
    """An evaluate() result as curve keys: a float is the test error; a dict (``evaluate_set``'s keys)
    gives test_error, test_loss and test_accuracy."""
    if isinstance(result, dict):
        return dict(test_error=result["error"], test_loss=result["loss"], test_accuracy=result["accuracy"])
    return dict(test_error=result)


def run_epochs(params, batches_of_epoch, loss_fn, *, lr, momentum, weight_decay, cosine, max_epochs,
            loss_threshold, evaluate, record, eval_every, progress, desc, callback, combine=whole_batch,
            labels=None, optimizer="sgd", scheduler=None, scheduler_time=None, accumulate=None,
            stop_check="epoch", resume=None, after_epoch=None):
    """The SGD loop shared by the trainers: epochs of minibatches, an optional per-epoch learning-rate
    schedule, stop on the mean train loss of an epoch falling below loss_threshold or on max_epochs;
    evaluate() at the epochs of eval_every (an int: its multiples; a collection: those epochs) and at the
    stopping epoch. Appends to record.curve (each point also carrying the dict `labels`, e.g. the layer a
    layerwise stage trains); returns the last curve point. KeyboardInterrupt propagates to the caller.

    evaluate() returns the test error (a float), or ``evaluate_set``'s dict, which gives the point
    test_error, test_loss and test_accuracy. callback(point) runs after each evaluation, once the point is
    in record.curve.

    optimizer, scheduler, scheduler_time, cosine: ``make_optimizer`` and ``make_scheduler``.
    accumulate=N (an int, the samples of an epoch): gradient accumulation over the whole epoch, the
    reference's --accumulation: each minibatch's mean loss is divided by N / its size before backward
    (by the number of minibatches when they are equal, as the reference divides), the gradients add up,
    and the optimizer steps once, after the epoch's last minibatch; the recorded loss is the undivided one.
    stop_check="eval": the loss threshold is checked only at evaluation epochs (the reference checks it
    at its print checkpoints only); "epoch" (default): every epoch.
    resume=dict(epoch=e, optimizer=state, scheduler=state): continue after epoch e with those states.
    after_epoch(epoch, optimizer, scheduler) runs at the end of every epoch, after the evaluation.

    combine(loss, inputs), called between backward and the optimizer step, returns the minibatch's mean
    loss (float or 0-dim tensor) and size: data-parallel training (``rhmfast.studies.distributed``) sums the
    ranks' gradients there. The epoch's loss is summed in float64 where the losses are and read once per
    epoch (one host sync an epoch on a GPU, not one a step); the bits are those of a Python float sum."""
    check_choice("stop_check", stop_check, STOP_CHECKS)
    if accumulate is not None and combine is not whole_batch:
        raise ValueError("rhmfast: gradient accumulation runs in one process only (combine must be whole_batch)")
    opt = make_optimizer(params, optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = make_scheduler(opt, scheduler=scheduler, scheduler_time=scheduler_time, cosine=cosine, lr=lr,
                           max_epochs=max_epochs)
    first = 1
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        if sched is not None:
            sched.load_state_dict(resume["scheduler"])
        first = resume["epoch"] + 1
    point = None
    with tqdm(range(first, max_epochs + 1), desc=desc, disable=not progress, leave=False, total=max_epochs,
              initial=first - 1) as bar:  # closed on Ctrl-C too
        for epoch in bar:
            total, count = None, 0
            if accumulate is not None:
                opt.zero_grad(set_to_none=True)
            for inputs, targets in batches_of_epoch():
                loss = loss_fn(inputs, targets)
                if accumulate is None:
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    mean_loss, n = combine(loss, inputs)
                    opt.step()
                else:
                    mean_loss, n = loss.detach(), inputs.shape[0]
                    (loss / (accumulate / n)).backward()
                term = torch.as_tensor(mean_loss, dtype=torch.float64) * n
                total = term if total is None else total + term
                count += n
                record.samples_seen += n
            if accumulate is not None:
                opt.step()
            if sched is not None:
                sched.step()
            train_loss = total.item() / count
            evaluating = is_eval_epoch(epoch, eval_every)
            if not math.isfinite(train_loss):
                record.stopped_by = "diverged"
            elif train_loss < loss_threshold and (stop_check == "epoch" or evaluating):
                record.stopped_by = "loss_threshold"
            elif epoch == max_epochs:
                record.stopped_by = "budget"
            if evaluating or record.stopped_by:
                point = dict(epoch=epoch, samples_seen=record.samples_seen, train_loss=train_loss,
                             **curve_metrics(evaluate()), **(labels or {}))
                record.curve.append(point)
                bar.set_postfix(loss=f"{train_loss:.2e}", err=f"{point['test_error']:.3f}")
                if callback is not None:
                    callback(point)
            if after_epoch is not None:
                after_epoch(epoch, opt, sched)
            if record.stopped_by:
                break
    return point
