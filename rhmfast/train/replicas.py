"""Replica-batched SGD: K end-to-end runs of one hCNN architecture trained as one batched model.

``train_sgd_replicas`` does, for each replica k, what ``train_sgd(replicas.replica(k), grammar, n_train[k],
seed_data=seed_data[k], seed_order=seed_order[k], ...)`` does: the same training and test sets, the same
minibatch order, the same initial weights, its own momentum buffers, learning-rate schedule, stopping rule
and evaluations at its own epochs, and a ``RunRecord`` in train_sgd's format. What changes is the cost: one
fused replica-form trunk call, one backward and one optimizer update per step for all replicas together, so
the per-step overhead of Python, autograd and the optimizer is paid once for K runs.

The step loop. All replicas step together; step t of replica k is the t-th minibatch of its own order, so a
replica with a smaller training set starts its epochs more often. Minibatches of different sizes (the last
one of an epoch, or n_train < batch_size) run as one group per size, or padded to the step's largest.
A replica whose run stopped (loss threshold, budget, divergence) is taken out of the batched model (its
weights written back into ``replicas``): it no longer changes and no longer costs anything.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from rhmfast._checks import check_choice
from rhmfast.models import device_of
from rhmfast.models.hcnn import HierarchicalCNNReplicas
from rhmfast.train.end_to_end import REFERENCE_OPTIONS, bayes_error_of, sgd_record
from rhmfast.train.loop import (check_eval_schedule, check_fits, curve_metrics, evaluate_set, is_eval_epoch,
                                make_scheduler, minibatches)
from rhmfast.train.record import finish


def _per_replica(name: str, value, K: int) -> list:
    """value as a list of K: a single value is shared, a list must have one entry per replica."""
    if isinstance(value, (list, tuple)):
        if len(value) != K:
            raise ValueError(f"rhmfast: {name} must be one value or a list of one per replica (K={K}), got "
                             f"{len(value)} values")
        return list(value)
    return [value] * K


class _ReplicaView(nn.Module):
    """Replica `row` of a HierarchicalCNNReplicas as a model on token ids [B, s^L] (for evaluate_set)."""

    def __init__(self, replicas: HierarchicalCNNReplicas, row: int):
        super().__init__()
        self.replicas, self.row = replicas, row

    def forward(self, tokens):
        return self.replicas.forward_replica(self.row, tokens)


class _Run:
    """One replica's run: its data, order, schedule, record and position in its epoch."""

    def __init__(self, k, record, data, steps, max_epochs, eval_every, lr_holder, schedule):
        self.k, self.record, self.steps, self.max_epochs, self.eval_every = k, record, steps, max_epochs, eval_every
        self.x_train, self.y_train, self.x_test, self.y_test, self.next_batch, self.new_epoch = data
        self.lr_holder, self.schedule = lr_holder, schedule
        self.epoch, self.step_in_epoch, self.total, self.count = 0, 0, None, 0

    @property
    def lr(self) -> float:
        return self.lr_holder.param_groups[0]["lr"]


def train_sgd_replicas(replicas: HierarchicalCNNReplicas, grammar, n_train, *, seed_data, seed_order,
                       n_test: int = 4096, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                       batch_size: int = 128, max_epochs=200, cosine: bool = False, loss_threshold: float = 1e-3,
                       eval_every=None, online: bool = False, progress: bool = True, callback=None,
                       optimizer: str = "sgd", scheduler: str | None = None, scheduler_time: int | None = None,
                       eval_at_start: bool = False, stop_check: str = "epoch", order: str = "rhmfast",
                       replacement: bool = False, on_stop=None, exact: bool = True) -> list:
    """Train the K replicas of ``replicas`` (``HierarchicalCNN.replicas``) end to end, in place; returns K
    RunRecords, record k the one ``train_sgd`` returns for replica k's solo run. grammar: the data, as
    train_sgd's (an RHM or a task on one).

    Per replica (an int for all, or a list of K): n_train, seed_data, seed_order, max_epochs. eval_every: an
    int or a collection of epochs for every replica (as train_sgd's), a list of K lists of epochs (one
    schedule per replica), or None (default): max_epochs // 5 (at least 1) of each replica, what a sweep's
    runs use. The other keywords are train_sgd's, shared by all
    replicas: optimizer "sgd" only (momentum, weight_decay; Adam runs one by one with train_sgd), the
    schedules (cosine, scheduler, scheduler_time: each replica's follows its own epochs), stop_check,
    eval_at_start, order, replacement, online. Gradient accumulation and checkpoints are train_sgd's alone.

    Minibatches of different sizes (the last of an epoch, or n_train < batch_size) run as one group per size
    (exact=True, the default): then, on the CPU, every replica's weights, curve and test errors are its solo
    run's bits, when the width is a multiple of 16 (every replica's block then starts 64-byte aligned, as a
    solo model's fresh tensors do; MKL's results depend on alignment). exact=False pads them to the step's
    largest instead (one trunk call a step, some wasted rows): the padded products round like the solo run's
    in almost every case, not all (MKL picks other kernels for tiny products), so runs agree to rounding.

    callback(k, point) runs after each of replica k's evaluations; on_stop(k, record) as soon as replica k's
    run has ended and its record is final (a sweep stores it then). Ctrl-C ends every unfinished run as
    train_sgd does (interrupted=True) and returns all K records. Records' wall_time_s is the pack's time from
    the start until that run ended. Same arguments, same bits."""
    if not isinstance(replicas, HierarchicalCNNReplicas):
        raise TypeError(f"rhmfast: train_sgd_replicas trains a HierarchicalCNNReplicas (HierarchicalCNN.replicas), "
                        f"got {type(replicas).__name__}")
    check_fits(replicas, grammar, "replicas")
    check_choice("optimizer (train_sgd_replicas; Adam runs one by one with train_sgd)", optimizer, ("sgd",))
    K = replicas.n_replicas
    n_train, seed_data, seed_order, max_epochs = (_per_replica(name, value, K) for name, value in (
        ("n_train", n_train), ("seed_data", seed_data), ("seed_order", seed_order), ("max_epochs", max_epochs)))
    for name, values in (("max_epochs", max_epochs), ("n_train", n_train)):
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"rhmfast: every {name} must be an int >= 1, got {value!r}")
    if eval_every is None:
        schedules = [max(1, e // 5) for e in max_epochs]
    elif isinstance(eval_every, list) and eval_every and all(isinstance(e, (list, tuple)) for e in eval_every):
        schedules = [check_eval_schedule(e) for e in _per_replica("eval_every", eval_every, K)]
    else:
        schedules = [check_eval_schedule(eval_every)] * K
    device = device_of(replicas)
    models = [replicas.replica(k) for k in range(K)]  # the solo models, for the records' configs only
    runs = []
    effective_lr = lr * replicas.lr_scale
    for k in range(K):
        record = sgd_record(models[k], grammar, n_train[k], n_test=n_test, lr=lr, momentum=momentum,
                            weight_decay=weight_decay, batch_size=batch_size, max_epochs=max_epochs[k], cosine=cosine,
                            loss_threshold=loss_threshold, eval_every=schedules[k], online=online,
                            seed_data=seed_data[k], seed_order=seed_order[k], scheduler=scheduler,
                            scheduler_time=scheduler_time, eval_at_start=eval_at_start, stop_check=stop_check,
                            order=order, replacement=replacement)
        # The learning rate of replica k, stepped per its epochs by train_sgd's own schedule objects (same bits)
        holder = torch.optim.SGD([torch.zeros(0, requires_grad=True)], lr=effective_lr)
        schedule = make_scheduler(holder, scheduler=scheduler, scheduler_time=scheduler_time, cosine=cosine,
                                  lr=effective_lr, max_epochs=max_epochs[k])
        data = _data(grammar, n_train[k], n_test, seed_data[k], seed_order[k], batch_size, online, order, replacement,
                     device)
        record.bayes_error = bayes_error_of(grammar, data[2])
        runs.append(_Run(k, record, data, math.ceil(n_train[k] / batch_size), max_epochs[k], schedules[k], holder,
                         schedule))
    del models
    return _train(replicas, runs, momentum=momentum, weight_decay=weight_decay, loss_threshold=loss_threshold,
                  stop_check=stop_check, eval_at_start=eval_at_start, progress=progress, callback=callback,
                  on_stop=on_stop, exact=bool(exact))


def _data(grammar, n, n_test, seed_data, seed_order, batch_size, online, order, replacement, device):
    """(x_train, y_train, x_test, y_test, next_batch, new_epoch) of one run, as train_sgd draws them."""
    if online:
        x_test, y_test = grammar.sample(n_test, seed=seed_data, device=device)
        stream = grammar.batches(batch_size, seed=seed_data, start=n_test, device=device)
        return None, None, x_test, y_test, lambda: next(stream), lambda: None
    extra = {key: value for key, value in (("order", order), ("replacement", replacement))
             if value != REFERENCE_OPTIONS[key]}
    (x_train, y_train), (x_test, y_test) = grammar.split(n, n_test, seed=seed_data, device=device, **extra)
    gen = torch.Generator().manual_seed(seed_order)  # on the CPU: the same order on every device
    epoch = [None]

    def new_epoch():
        epoch[0] = minibatches(n, batch_size, gen, device)

    def next_batch():
        idx = next(epoch[0])
        return x_train[idx], y_train[idx]

    return x_train, y_train, x_test, y_test, next_batch, new_epoch


def _sgd_update(params, buffers, lrs, momentum, weight_decay):
    """torch.optim.SGD's update (dampening 0, no Nesterov; the same operations, so the same bits), with a
    learning rate per replica (the leading dim of every parameter)."""
    same = all(lr == lrs[0] for lr in lrs)
    with torch.no_grad():
        for i, p in enumerate(params):
            grad = p.grad
            if weight_decay != 0:
                grad = grad.add(p, alpha=weight_decay)
            if momentum != 0:
                if buffers[i] is None:
                    buffers[i] = torch.clone(grad).detach()
                else:
                    buffers[i].mul_(momentum).add_(grad)
                grad = buffers[i]
            if same:
                p.add_(grad, alpha=-lrs[0])
            else:
                for row, lr in enumerate(lrs):
                    p[row].add_(grad[row], alpha=-lr)
            p.grad = None


def _train(replicas, runs, *, momentum, weight_decay, loss_threshold, stop_check, eval_at_start, progress,
           callback, on_stop, exact) -> list:
    started = time.perf_counter()
    active = list(runs)
    work = replicas.subset([run.k for run in active])
    params = list(work.parameters())
    buffers = [None] * len(params)

    def evaluate(row, run):
        return evaluate_set(_ReplicaView(work, row), run.x_test, run.y_test)

    def end(rows):
        """The runs at `rows` have stopped: their records made final, their weights written back into replicas
        and the other runs kept packed; then on_stop for each."""
        nonlocal work, params, buffers, active
        for row in rows:
            record = active[row].record
            record.final_test_error = (float("nan") if record.stopped_by == "diverged"
                                       else curve_metrics(evaluate(row, active[row]))["test_error"])
            finish(record, started)
        ended = [active[r] for r in rows]
        replicas.load_subset([run.k for run in ended], work.subset(rows))
        keep = [r for r in range(len(active)) if r not in rows]
        if keep:
            index = torch.tensor(keep, device=params[0].device)
            buffers = [None if b is None else b.index_select(0, index) for b in buffers]
            work = work.subset(keep)
            params = list(work.parameters())
        active = [active[r] for r in keep]
        for run in ended:
            if on_stop is not None:
                on_stop(run.k, run.record)

    total_steps = max(run.max_epochs * run.steps for run in runs)
    bar = tqdm(total=total_steps, desc=f"sgd x{len(runs)}", disable=not progress, leave=False)
    try:
        if eval_at_start:
            for row, run in enumerate(active):
                train_loss = evaluate_set(_ReplicaView(work, row), run.x_train, run.y_train)["loss"]
                point = dict(epoch=0, samples_seen=0, train_loss=train_loss, **curve_metrics(evaluate(row, run)))
                run.record.curve.append(point)
                if callback is not None:
                    callback(run.k, point)
        while active:
            for run in active:
                if run.step_in_epoch == 0:
                    run.epoch += 1
                    run.new_epoch()
                    run.total, run.count = None, 0
            batches = [run.next_batch() for run in active]
            sizes = [x.shape[0] for x, _ in batches]
            means = torch.empty(len(active), dtype=torch.float64, device=batches[0][0].device)
            total = 0
            for rows in _groups(sizes, exact):
                total = total + _group_loss(work, batches, sizes, rows, means)
            total.backward()
            _sgd_update(params, buffers, [run.lr for run in active], momentum, weight_decay)
            terms = means * torch.tensor(sizes, dtype=torch.float64, device=means.device)
            finished = []
            for row, run in enumerate(active):
                run.total = terms[row] if run.total is None else run.total + terms[row]
                run.count += sizes[row]
                run.record.samples_seen += sizes[row]
                run.step_in_epoch += 1
                if run.step_in_epoch == run.steps:
                    run.step_in_epoch = 0
                    if _end_epoch(run, row, evaluate, loss_threshold, stop_check, callback):
                        finished.append(row)
            bar.update(1)
            if finished:
                end(finished)
                bar.set_postfix(running=len(active))
    except KeyboardInterrupt:
        for run in active:
            run.record.interrupted, run.record.stopped_by = True, "interrupted"
        end(list(range(len(active))))
    finally:
        bar.close()
    return [run.record for run in runs]


def _groups(sizes: list[int], exact: bool) -> list[list[int]]:
    """The rows that run through the model together this step: all of them (short minibatches padded), or
    with exact=True one group per minibatch size, the largest first."""
    if not exact or all(n == sizes[0] for n in sizes):
        return [list(range(len(sizes)))]
    return [[row for row, n in enumerate(sizes) if n == size] for size in sorted(set(sizes), reverse=True)]


def _group_loss(work, batches, sizes, rows, means):
    """The summed minibatch-mean cross-entropies of the replicas `rows` (their batches padded to the largest
    with rows of loss weight 0), to call backward on; writes each replica's mean loss, computed as train_sgd's
    F.cross_entropy computes it, into means[row] (float64)."""
    width = max(sizes[row] for row in rows)
    if all(sizes[row] == width for row in rows):
        tokens = torch.stack([batches[row][0] for row in rows])
        targets = torch.stack([batches[row][1] for row in rows])
    else:  # padded rows: token 0, target 0, loss weight 0
        x, y = batches[rows[0]]
        tokens, targets = x.new_zeros((len(rows), width, x.shape[1])), y.new_zeros((len(rows), width))
        for i, row in enumerate(rows):
            tokens[i, :sizes[row]], targets[i, :sizes[row]] = batches[row]
    logits = work(tokens, rows=None if len(rows) == len(sizes) else rows)
    log_probs = F.log_softmax(logits, -1)  # cross-entropy as F.cross_entropy computes it
    losses = F.nll_loss(log_probs.view(-1, logits.shape[-1]), targets.view(-1), reduction="none").view(len(rows),
                                                                                                        width)
    if all(sizes[row] == width for row in rows):
        group_means = losses.mean(1)
    else:
        weights = torch.tensor([[1.0 / sizes[row]] * sizes[row] + [0.0] * (width - sizes[row]) for row in rows],
                               dtype=losses.dtype, device=losses.device)
        group_means = (losses * weights).sum(1)
    with torch.no_grad():  # each run's mean loss summed in train_sgd's order, for its record's bits
        for i, row in enumerate(rows):
            means[row] = F.nll_loss(log_probs[i, :sizes[row]], targets[i, :sizes[row]])
    return group_means.sum()


def _end_epoch(run, row, evaluate, loss_threshold, stop_check, callback) -> bool:
    """train_sgd's end of an epoch for one replica (run_epochs): schedule, stopping rule, evaluation. True
    when its run has stopped."""
    if run.schedule is not None:
        run.lr_holder.step()  # a no-op (its parameter has no gradient) that keeps the schedule's order check quiet
        run.schedule.step()
    record = run.record
    train_loss = run.total.item() / run.count
    evaluating = is_eval_epoch(run.epoch, run.eval_every)
    if not math.isfinite(train_loss):
        record.stopped_by = "diverged"
    elif train_loss < loss_threshold and (stop_check == "epoch" or evaluating):
        record.stopped_by = "loss_threshold"
    elif run.epoch == run.max_epochs:
        record.stopped_by = "budget"
    if evaluating or record.stopped_by:
        point = dict(epoch=run.epoch, samples_seen=record.samples_seen, train_loss=train_loss,
                     **curve_metrics(evaluate(row, run)))
        record.curve.append(point)
        if callback is not None:
            callback(run.k, point)
    return bool(record.stopped_by)
