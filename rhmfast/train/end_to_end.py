"""End-to-end SGD of any model on token ids: the 2024 reference library's recipe, with its optimizer,
schedule and accumulation options, and checkpoints that a run resumes from bit for bit."""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time

import torch
import torch.nn.functional as F

from rhmfast._checks import check_choice
from rhmfast.data.grammar import RHM
from rhmfast.models import device_of
from rhmfast.train.loop import (OPTIMIZERS, SCHEDULERS, STOP_CHECKS, check_budget, check_eval_schedule, check_fits,
                                curve_metrics, evaluate_set, minibatches, run_epochs, whole_batch)
from rhmfast.train.record import RunRecord, finish, grammar_config

CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "rhmfast-train-sgd-checkpoint", 1
# The options added for the reference's recipes, with their defaults: a record's config names one only when
# it differs, so a run with the defaults has the same record (and config) as before these options existed.
REFERENCE_OPTIONS = dict(optimizer="sgd", scheduler=None, scheduler_time=None, accumulation=False,
                         eval_at_start=False, stop_check="epoch", order="rhmfast", replacement=False)


def train_sgd(model, grammar, n_train: int, *, n_test: int = 4096, lr: float = 0.1, momentum: float = 0.9,
              weight_decay: float = 0.0, batch_size: int = 128, max_epochs: int = 200, cosine: bool = False,
              loss_threshold: float = 1e-3, eval_every: int = 5, online: bool = False, seed_data: int = 0,
              seed_order: int = 0, progress: bool = True, callback=None, optimizer: str = "sgd",
              scheduler: str | None = None, scheduler_time: int | None = None, accumulation: bool = False,
              eval_at_start: bool = False, stop_check: str = "epoch", order: str = "rhmfast",
              replacement: bool = False, checkpoint: str | os.PathLike | None = None,
              checkpoint_every: int = 0) -> RunRecord:
    """End-to-end training with cross-entropy (the reference recipe). The learning rate is multiplied by
    the model's lr_scale (H for a mean-field hCNN), as the reference multiplies its lr by the width.
    grammar: the data, an RHM (the root label is the target) or a task on one (``rhmfast.data.make_task``,
    e.g. ``LastToken``: the last leaf is the target); record.bayes_error is the Bayes-optimal error on the
    test set (``bayes_error_of``).

    Data. Offline (default): a fixed training set of n_train samples and a disjoint test set of n_test,
    drawn without replacement with ``grammar.split(seed=seed_data)`` (``order`` and ``replacement=True``, the
    reference's data order and with-replacement draw, are passed on to split only when they are not the
    defaults "rhmfast" and False, so this works with grammars whose split has neither argument);
    minibatches in an order drawn from seed_order. online=True: every epoch is n_train fresh samples
    (rounded up to whole minibatches) from ``grammar.batches`` (the infinite-data limit); the test set is
    the first n_test samples of the iid stream seed_data, training samples follow them. Data is generated
    on the device of the model's parameters.

    Optimization (the reference's main.py/init.py/training.py flags):
    - optimizer: "sgd" (lr, momentum, weight_decay) or "adam" (lr, weight_decay; momentum unused).
    - scheduler, stepped once per epoch: None (constant), "cosine" (CosineAnnealingLR, T_max =
      scheduler_time, eta_min = 0.1 x the effective lr), "warmup" (the reference's CosineWarmupLR: factor
      0.5 (1 + cos(pi e / max_epochs)), times e / scheduler_time while e <= scheduler_time, for epoch e+1;
      the first epoch's rate is 0, as there). scheduler_time None means max_epochs.
      cosine=True is rhmfast's own schedule, kept as it was: CosineAnnealingLR with T_max = max_epochs
      and eta_min 0 (the reference's "cosine" stops at 0.1 lr); it cannot be combined with scheduler.
    - accumulation=True: the gradients of all the epoch's minibatches are summed, each minibatch's mean
      loss divided by (epoch size / its size), and the optimizer steps once per epoch: the full-batch
      gradient step, computed in minibatches (the reference divides by the number of minibatches, which
      is the same when batch_size divides n_train, as the reference requires).
    - Stops when an epoch's mean train loss < loss_threshold (checked every epoch, or with
      stop_check="eval" only at evaluation epochs, as the reference checks at its print checkpoints) or
      after max_epochs, or when the loss is not finite ("diverged").

    Evaluation. At the epochs of eval_every (an int: its multiples; a collection: those epochs, e.g.
    ``loop.reference_checkpoints(print_freq, max_epochs, fill=print_freq >= 10)``) and at the stopping
    epoch, a curve point dict(epoch, samples_seen, train_loss, test_error, test_loss, test_accuracy) is
    appended to record.curve: train_loss the epoch's mean minibatch loss, test_loss the mean cross-entropy
    on the test set, test_accuracy = (n_test - errors) / n_test. eval_at_start=True (offline only) first
    adds the reference's t = 0 point: epoch 0, samples_seen 0, train_loss the mean cross-entropy of the
    untrained model on the training set.

    callback(point) is called after each evaluation with that point (a dict of plain numbers, already in
    record.curve); while it runs, `model` holds the weights of that epoch (copy its state_dict to keep
    them). Raising KeyboardInterrupt in it ends the run as Ctrl-C does: the partial record with
    interrupted=True. A callback with state_dict()/load_state_dict() methods (``record.BestTestLoss``, the
    reference's 'best') has its state saved in checkpoints and restored on resume.

    Checkpoints. checkpoint=path: if the file exists the run resumes from it (and a finished run's file
    just gives its record back); if its run's arguments (config and seeds) differ from these, or the
    model's parameters differ in name, shape or dtype, a ValueError names the file. checkpoint_every=k
    (> 0) writes it after every k-th epoch, and at the end of a run that was not interrupted (k = 0: only
    at the end), atomically (a temporary file, fsync, os.replace): the model's state, the optimizer's and
    the schedule's, the minibatch order generator (offline), the global torch RNG states, the record so
    far and the callback's state. A run resumed from any checkpoint ends with the same weights and record
    (but for wall times, which add up) as the uninterrupted run.
    """
    check_fits(model, grammar)
    record = sgd_record(model, grammar, n_train, n_test=n_test, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         batch_size=batch_size, max_epochs=max_epochs, cosine=cosine, loss_threshold=loss_threshold,
                         eval_every=eval_every, online=online, seed_data=seed_data, seed_order=seed_order,
                         optimizer=optimizer, scheduler=scheduler, scheduler_time=scheduler_time,
                         accumulation=accumulation, eval_at_start=eval_at_start, stop_check=stop_check, order=order,
                         replacement=replacement)
    saver = None
    if checkpoint is not None or checkpoint_every:
        if checkpoint is None:
            raise ValueError("rhmfast: checkpoint_every needs checkpoint, the file to write")
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0:
            raise ValueError(f"rhmfast: checkpoint_every must be an int >= 0, got {checkpoint_every!r}")
        saver = Checkpoint(checkpoint, checkpoint_every)
    device = device_of(model)  # data is generated where the model lives
    evaluate_train = None
    if online:
        # One iid stream per seed_data: the test set is its first n_test samples, training reads on from there.
        x_test, y_test = grammar.sample(n_test, seed=seed_data, device=device)
        steps = math.ceil(n_train / batch_size)
        stream = [grammar.batches(batch_size, seed=seed_data, start=n_test, device=device)]

        def batches_of_epoch():
            for _ in range(steps):
                yield next(stream[0])

        epoch_samples = steps * batch_size

        def data_state():
            return None  # the stream's position follows from the epoch

        def restore_data(saved, epoch):
            stream[0] = grammar.batches(batch_size, seed=seed_data, start=n_test + epoch * steps * batch_size,
                                        device=device)
    else:
        # order and replacement are passed only when not the defaults: a split without them works as before
        extra = {key: value for key, value in (("order", order), ("replacement", replacement))
                 if value != REFERENCE_OPTIONS[key]}
        (x_train, y_train), (x_test, y_test) = grammar.split(n_train, n_test, seed=seed_data, device=device, **extra)
        gen = torch.Generator().manual_seed(seed_order)  # on the CPU: the same order on every device

        def batches_of_epoch():
            for idx in minibatches(n_train, batch_size, gen, device):
                yield x_train[idx], y_train[idx]

        epoch_samples = n_train
        data_state = gen.get_state

        def restore_data(saved, epoch):
            gen.set_state(saved)

        def evaluate_train():
            return evaluate_set(model, x_train, y_train)["loss"]

    record.bayes_error = bayes_error_of(grammar, x_test)
    if saver is not None:
        saver.data_state, saver.restore_data = data_state, restore_data
    return run_sgd(model, record, batches_of_epoch, lambda x, y: F.cross_entropy(model(x), y),
                    lambda: evaluate_set(model, x_test, y_test), progress=progress, callback=callback,
                    evaluate_train=evaluate_train, epoch_samples=epoch_samples, checkpoint=saver)


def bayes_error_of(data, x_test: torch.Tensor) -> float:
    """The Bayes-optimal error on the test inputs x_test (``RunRecord.bayes_error``): the data's own
    ``bayes_error(x_test)`` where it has one (a task such as ``LastToken``), 0.0 for the classification of an
    RHM (the grammar is unambiguous: every string has one derivation, hence one label), NaN for other data."""
    if callable(getattr(data, "bayes_error", None)):
        return float(data.bayes_error(x_test))
    return 0.0 if isinstance(data, RHM) else math.nan


def sgd_record(model, grammar, n_train, *, n_test, lr, momentum, weight_decay, batch_size, max_epochs, cosine,
                loss_threshold, eval_every, online, seed_data, seed_order, optimizer="sgd", scheduler=None,
                scheduler_time=None, accumulation=False, eval_at_start=False, stop_check="epoch",
                order="rhmfast", replacement=False, checkpoint=None, checkpoint_every=0) -> RunRecord:
    """train_sgd's settings checked, and its empty record. The reference's options appear in its config
    only where they differ from their defaults (REFERENCE_OPTIONS). checkpoint/checkpoint_every are
    train_sgd's own (it does not pass them here): given here (by train_sgd_distributed), a ValueError."""
    if checkpoint is not None or checkpoint_every:
        raise ValueError("rhmfast: checkpoint and checkpoint_every are train_sgd's (one process); "
                         "train_sgd_distributed does not write checkpoints")
    check_budget(n_train=n_train, n_test=n_test, batch_size=batch_size, max_epochs=max_epochs)
    eval_every = check_eval_schedule(eval_every)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_choice("scheduler", scheduler, SCHEDULERS)
    check_choice("stop_check", stop_check, STOP_CHECKS)
    if scheduler_time is not None:
        check_budget(scheduler_time=scheduler_time)
    if cosine and scheduler is not None:
        raise ValueError(f"rhmfast: cosine=True (rhmfast's cosine schedule, eta_min 0) and scheduler={scheduler!r} "
                         "both choose a schedule; pass only one")
    for name, value in (("accumulation", accumulation), ("eval_at_start", eval_at_start),
                        ("replacement", replacement)):
        if not isinstance(value, bool):
            raise ValueError(f"rhmfast: {name} must be True or False, got {value!r}")
    if not isinstance(order, str):
        raise ValueError(f"rhmfast: order must be a string such as 'rhmfast' or 'pcsl', got {order!r}")
    if online and eval_at_start:
        raise ValueError("rhmfast: eval_at_start evaluates the training set, which online training does not have")
    if online and order != "rhmfast":
        raise ValueError(f"rhmfast: order={order!r} chooses the offline split's order; online training has none")
    if online and replacement:
        raise ValueError("rhmfast: replacement=True chooses the offline split's draw; online samples are iid already")
    options = dict(optimizer=optimizer, scheduler=scheduler, scheduler_time=scheduler_time, accumulation=accumulation,
                   eval_at_start=eval_at_start, stop_check=stop_check, order=order, replacement=replacement)
    return RunRecord("train_sgd", dict(model=type(model).__name__, **grammar_config(grammar), n_train=n_train,
                                       n_test=n_test, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                       batch_size=batch_size, max_epochs=max_epochs, cosine=cosine,
                                       loss_threshold=loss_threshold, eval_every=eval_every, online=online,
                                       width=getattr(model, "width", None), norm=getattr(model, "norm", None),
                                       **{k: v for k, v in options.items() if v != REFERENCE_OPTIONS[k]}),
                     dict(rules=getattr(grammar, "grammar", grammar).seed, data=seed_data, order=seed_order,
                          model=getattr(model, "seed", None)))


def run_sgd(model, record, batches_of_epoch, loss_fn, evaluate, *, progress, callback,
             combine=whole_batch, evaluate_train=None, epoch_samples=None, checkpoint=None) -> RunRecord:
    """train_sgd's loop with the settings of record.config, then the final test error, evaluate().

    evaluate() returns the test error or ``loop.evaluate_set``'s dict; evaluate_train() (needed by
    eval_at_start) the mean loss on the training set; epoch_samples (needed by accumulation) the samples
    of an epoch; checkpoint a ``Checkpoint`` (its data_state and restore_data set) or None."""
    c = record.config

    def option(name):
        return c.get(name, REFERENCE_OPTIONS[name])

    if combine is not whole_batch and (option("accumulation") or option("order") != "rhmfast"
                                       or option("replacement")):
        raise ValueError("rhmfast: accumulation, order and replacement are train_sgd's (one process); "
                         "train_sgd_distributed supports none of them")
    if option("eval_at_start") and evaluate_train is None:
        raise ValueError("rhmfast: eval_at_start needs the training set's loss, which this trainer does not give")
    if option("accumulation") and epoch_samples is None:
        raise ValueError("rhmfast: accumulation needs the number of samples of an epoch")
    started, earlier_s = time.perf_counter(), 0.0
    resume = None
    if checkpoint is not None:
        saved = checkpoint.load(model, record, callback)
        if saved is not None:
            earlier_s = saved["record"]["wall_time_s"]
            if saved["finished"]:
                return finish(record, started, earlier_s)
            resume = dict(epoch=saved["epoch"], optimizer=saved["optimizer"], scheduler=saved["scheduler"])
        checkpoint.started, checkpoint.earlier_s = started, earlier_s
    try:
        if option("eval_at_start") and resume is None:
            point = dict(epoch=0, samples_seen=0, train_loss=evaluate_train(), **curve_metrics(evaluate()))
            record.curve.append(point)
            if callback is not None:
                callback(point)
        run_epochs(list(model.parameters()), batches_of_epoch, loss_fn, lr=c["lr"] * model.lr_scale,
                momentum=c["momentum"], weight_decay=c["weight_decay"], cosine=c["cosine"],
                max_epochs=c["max_epochs"], loss_threshold=c["loss_threshold"], evaluate=evaluate, record=record,
                eval_every=c["eval_every"], progress=progress, desc=f"sgd P={c['n_train']}", callback=callback,
                combine=combine, optimizer=option("optimizer"), scheduler=option("scheduler"),
                scheduler_time=option("scheduler_time"),
                accumulate=epoch_samples if option("accumulation") else None, stop_check=option("stop_check"),
                resume=resume,
                after_epoch=None if checkpoint is None else
                lambda epoch, opt, sched: checkpoint.after_epoch(epoch, opt, sched, model, record, callback))
    except KeyboardInterrupt:
        record.interrupted, record.stopped_by = True, "interrupted"
    # A diverged model's outputs are NaN, and argmax of NaN is an arbitrary class: no test error then.
    record.final_test_error = (float("nan") if record.stopped_by == "diverged"
                               else curve_metrics(evaluate())["test_error"])
    if checkpoint is not None and not record.interrupted:
        checkpoint.save(model, record, callback, finished=True)
    return finish(record, started, earlier_s)


def _identity(record) -> dict:
    return dict(trainer=record.trainer, config=record.config, seeds=record.seeds)


def _differences(theirs: dict, mine: dict) -> list[str]:
    """'part.key: value there, value here' for every config or seed that differs (and the trainer)."""
    out = []
    for part in mine:
        if not isinstance(mine[part], dict) or not isinstance(theirs.get(part), dict):
            if mine[part] != theirs.get(part):
                out.append(f"{part}: {theirs.get(part)!r} there, {mine[part]!r} here")
            continue
        for key in sorted(set(mine[part]) | set(theirs[part]), key=str):
            if mine[part].get(key) != theirs[part].get(key):
                out.append(f"{part}.{key}: {theirs[part].get(key)!r} there, {mine[part].get(key)!r} here")
    return out


def _parameter_layout(state) -> dict:
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in state.items()}


def save_atomic(obj, path) -> None:
    """torch.save to a temporary file in path's folder, fsync, os.replace onto path, fsync the folder: a
    reader (or a run killed at any moment) sees the old file or the new one, never a part."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself made durable (not possible on every system)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class Checkpoint:
    """train_sgd's checkpoint file: what it saves, when, and how a run resumes from it. data_state() and
    restore_data(saved, epoch) (set by train_sgd) save and restore the position of the data order."""

    def __init__(self, path, every: int):
        self.path, self.every = os.fspath(path), every
        self.data_state = lambda: None
        self.restore_data = lambda saved, epoch: None
        self.last = None  # (epoch, optimizer, scheduler) of the last finished epoch
        self.started, self.earlier_s = time.perf_counter(), 0.0

    def _refuse(self, why: str) -> ValueError:
        return ValueError(f"rhmfast: cannot resume from checkpoint {self.path}: {why}")

    def after_epoch(self, epoch, optimizer, scheduler, model, record, callback) -> None:
        self.last = (epoch, optimizer, scheduler)
        if self.every and epoch % self.every == 0 and not record.stopped_by:  # a stop is saved as finished
            self.save(model, record, callback, finished=False)

    def save(self, model, record, callback, *, finished: bool) -> None:
        if self.last is None:  # nothing trained (e.g. resumed from a finished file): nothing new to save
            return
        epoch, optimizer, scheduler = self.last
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        rng = dict(cpu=torch.get_rng_state(), cuda=torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
        state = dict(format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, identity=_identity(record), epoch=epoch,
                     finished=finished, model=model.state_dict(), optimizer=optimizer.state_dict(),
                     scheduler=None if scheduler is None else scheduler.state_dict(), data=self.data_state(), rng=rng,
                     record=dict(curve=list(record.curve), samples_seen=record.samples_seen,
                                 stopped_by=record.stopped_by, final_test_error=record.final_test_error,
                                 wall_time_s=time.perf_counter() - self.started + self.earlier_s),
                     callback=callback.state_dict() if _stateful(callback) else None)
        save_atomic(state, self.path)

    def load(self, model, record, callback):
        """The saved state, after restoring the model, the data order, the record, the callback and the RNGs
        from it; None when there is no file yet."""
        if not os.path.exists(self.path):
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # any unreadable file: say which and why
            raise self._refuse(f"unreadable ({type(error).__name__}: {error})") from error
        if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
            raise self._refuse("not a train_sgd checkpoint")
        if saved.get("version") != CHECKPOINT_VERSION:
            raise self._refuse(f"version {saved.get('version')!r}, this rhmfast reads {CHECKPOINT_VERSION}")
        mine, theirs = _identity(record), saved["identity"]
        if mine != theirs:
            differ = _differences(theirs, mine)
            raise self._refuse("it was written by a run with other arguments (" + "; ".join(differ) + ")")
        if _parameter_layout(saved["model"]) != _parameter_layout(model.state_dict()):
            raise self._refuse("its model's parameters differ in names, shapes or dtypes from this model's")
        if (saved["callback"] is not None) != _stateful(callback):
            raise self._refuse("a callback with state_dict() saved state there" if saved["callback"] is not None
                               else "this callback has state_dict(), but the checkpoint holds no callback state")
        model.load_state_dict(saved["model"])
        self.restore_data(saved["data"], saved["epoch"])
        r = saved["record"]
        record.curve, record.samples_seen = list(r["curve"]), r["samples_seen"]
        record.stopped_by, record.final_test_error = r["stopped_by"], r["final_test_error"]
        if saved["callback"] is not None:
            callback.load_state_dict(saved["callback"])
        torch.set_rng_state(saved["rng"]["cpu"])
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if saved["rng"]["cuda"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state(saved["rng"]["cuda"], device)
        return saved


def _stateful(callback) -> bool:
    return callable(getattr(callback, "state_dict", None)) and callable(getattr(callback, "load_state_dict", None))
