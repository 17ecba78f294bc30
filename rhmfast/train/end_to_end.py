"""End-to-end SGD of any model on token ids: the 2024 reference library's recipe."""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from rhmfast.models import device_of
from rhmfast.train.loop import check_budget, check_fits, minibatches, run_epochs, test_error, whole_batch
from rhmfast.train.record import RunRecord, finish, grammar_config


def train_sgd(model, grammar, n_train: int, *, n_test: int = 4096, lr: float = 0.1, momentum: float = 0.9,
              weight_decay: float = 0.0, batch_size: int = 128, max_epochs: int = 200, cosine: bool = False,
              loss_threshold: float = 1e-3, eval_every: int = 5, online: bool = False, seed_data: int = 0,
              seed_order: int = 0, progress: bool = True, callback=None) -> RunRecord:
    """End-to-end SGD with cross-entropy (the reference recipe). The learning rate is multiplied by the
    model's lr_scale (H for a mean-field hCNN).

    Offline (default): a fixed training set of n_train samples and a disjoint test set of n_test, drawn
    without replacement with ``grammar.split(seed=seed_data)``; minibatches in an order drawn from seed_order.
    online=True: every epoch is n_train fresh samples from ``grammar.batches`` (the infinite-data limit);
    the test set is the first n_test samples of the iid stream seed_data, training samples follow them.
    Stops when an epoch's mean train loss < loss_threshold or after max_epochs; test error every
    eval_every epochs. callback(point) is called at each evaluation. Data is generated on the device of
    the model's parameters.
    """
    check_fits(model, grammar)
    record = sgd_record(model, grammar, n_train, n_test=n_test, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         batch_size=batch_size, max_epochs=max_epochs, cosine=cosine, loss_threshold=loss_threshold,
                         eval_every=eval_every, online=online, seed_data=seed_data, seed_order=seed_order)
    device = device_of(model)  # data is generated where the model lives
    if online:
        # One iid stream per seed_data: the test set is its first n_test samples, training reads on from there.
        x_test, y_test = grammar.sample(n_test, seed=seed_data, device=device)
        stream = grammar.batches(batch_size, seed=seed_data, start=n_test, device=device)

        def batches_of_epoch():
            for _ in range(math.ceil(n_train / batch_size)):
                yield next(stream)
    else:
        (x_train, y_train), (x_test, y_test) = grammar.split(n_train, n_test, seed=seed_data, device=device)
        order = torch.Generator().manual_seed(seed_order)  # on the CPU: the same order on every device

        def batches_of_epoch():
            for idx in minibatches(n_train, batch_size, order, device):
                yield x_train[idx], y_train[idx]

    return run_sgd(model, record, batches_of_epoch, lambda x, y: F.cross_entropy(model(x), y),
                    lambda: test_error(model, x_test, y_test), progress=progress, callback=callback)


def sgd_record(model, grammar, n_train, *, n_test, lr, momentum, weight_decay, batch_size, max_epochs, cosine,
                loss_threshold, eval_every, online, seed_data, seed_order) -> RunRecord:
    """train_sgd's settings checked, and its empty record."""
    check_budget(n_train=n_train, n_test=n_test, batch_size=batch_size, max_epochs=max_epochs,
                  eval_every=eval_every)
    return RunRecord("train_sgd", dict(model=type(model).__name__, **grammar_config(grammar), n_train=n_train,
                                       n_test=n_test, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                       batch_size=batch_size, max_epochs=max_epochs, cosine=cosine,
                                       loss_threshold=loss_threshold, eval_every=eval_every, online=online,
                                       width=getattr(model, "width", None), norm=getattr(model, "norm", None)),
                     dict(rules=grammar.seed, data=seed_data, order=seed_order, model=getattr(model, "seed", None)))


def run_sgd(model, record, batches_of_epoch, loss_fn, evaluate, *, progress, callback,
             combine=whole_batch) -> RunRecord:
    """train_sgd's loop with the settings of record.config, then the final test error, evaluate()."""
    c = record.config
    started = time.perf_counter()
    try:
        run_epochs(list(model.parameters()), batches_of_epoch, loss_fn, lr=c["lr"] * model.lr_scale,
                momentum=c["momentum"], weight_decay=c["weight_decay"], cosine=c["cosine"],
                max_epochs=c["max_epochs"], loss_threshold=c["loss_threshold"], evaluate=evaluate, record=record,
                eval_every=c["eval_every"], progress=progress, desc=f"sgd P={c['n_train']}", callback=callback,
                combine=combine)
    except KeyboardInterrupt:
        record.interrupted, record.stopped_by = True, "interrupted"
    # A diverged model's outputs are NaN, and argmax of NaN is an arbitrary class: no test error then.
    record.final_test_error = float("nan") if record.stopped_by == "diverged" else evaluate()
    return finish(record, started)
