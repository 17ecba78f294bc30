"""Trainers of the RHM learners, readable top to bottom.

- ``train_sgd``: the 2024 reference library's recipe for end-to-end training of any model on token ids.
- ``train_layerwise_sgd``: the reference's layerwise schedule for the hCNN, optionally with hierarchical
  ("hint") supervision of the intermediate layers by the latent-tree symbols of their level.
- ``train_ren_layerwise``: the algorithm of Ren et al. (2026), stage by stage, closed-form ridge.

Every trainer returns a ``RunRecord``. Fixed seeds (rules: the grammar's; data: ``seed_data``; order of
minibatches: ``seed_order``; model: the model's own) make a run repeatable bit for bit on CPU. Ctrl-C
(KeyboardInterrupt) ends training early and returns the partial record with ``interrupted=True``.
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rhmfast._checks import check_positive_int
from rhmfast.models import HierarchicalCNN, RenLayerwiseLearner, device_of
from rhmfast.models.observables import posterior_distance

EVAL_BATCH = 8192


@dataclasses.dataclass
class RunRecord:
    """What a training run did: its configuration and seeds, the curve of (epoch, samples seen, train
    loss, test error), the final test error, timing, and per-stage results of layerwise trainers."""
    trainer: str
    config: dict
    seeds: dict
    curve: list = dataclasses.field(default_factory=list)
    stages: list = dataclasses.field(default_factory=list)
    final_test_error: float = float("nan")
    samples_seen: int = 0
    wall_time_s: float = 0.0
    samples_per_s: float = 0.0
    interrupted: bool = False
    stopped_by: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _grammar_config(grammar) -> dict:
    return dict(v=grammar.v, m=grammar.m, s=grammar.s, L=grammar.L, n_classes=grammar.n_classes,
                rules=grammar.sampler, seed_rules=grammar.seed)


def _check_budget(**values) -> None:
    for name, value in values.items():
        check_positive_int(name, value)


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


def _minibatches(n: int, batch_size: int, gen: torch.Generator, device="cpu"):
    # Drawn on the generator's device (the same order everywhere), moved to `device` once per epoch.
    order = torch.randperm(n, generator=gen).to(device)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def _finish(record: RunRecord, started: float) -> RunRecord:
    record.wall_time_s = time.perf_counter() - started
    record.samples_per_s = record.samples_seen / record.wall_time_s if record.wall_time_s > 0 else 0.0
    return record


def _whole_batch(loss, inputs):
    """The minibatch's mean loss (a tensor: no host sync) and size, for a process that holds all of it
    (``_epochs``' default)."""
    return loss.detach(), inputs.shape[0]


def _epochs(params, batches_of_epoch, loss_fn, *, lr, momentum, weight_decay, cosine, max_epochs,
            loss_threshold, evaluate, record, eval_every, progress, desc, callback, combine=_whole_batch,
            labels=None):
    """The SGD loop shared by the trainers: epochs of minibatches, cosine schedule, stop on the mean train
    loss of an epoch falling below loss_threshold or on max_epochs; evaluate() every eval_every epochs.
    Appends to record.curve (each point also carrying the dict `labels`, e.g. the layer a layerwise stage
    trains); returns the last curve point. KeyboardInterrupt propagates to the caller.

    combine(loss, inputs), called between backward and the optimizer step, returns the minibatch's mean
    loss (float or 0-dim tensor) and size: data-parallel training (``rhmfast.distributed``) sums the
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


def _check_fits(model, grammar, what: str = "model") -> None:
    """The model's shape attributes (those it has of v, s, L, d = s^L, n_classes) equal the grammar's; a
    model without them (any user module) is taken as it is."""
    want = dict(v=grammar.v, s=grammar.s, L=grammar.L, d=grammar.input_dim, n_classes=grammar.n_classes)
    have = {k: getattr(model, k) for k in want if isinstance(getattr(model, k, None), int)}
    if any(have[k] != want[k] for k in have):
        keys = ", ".join(have)
        raise ValueError(f"rhmfast: the {what}'s ({keys}) must equal the grammar's, got "
                         f"{tuple(have.values())} and {tuple(want[k] for k in have)}")


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
    _check_fits(model, grammar)
    record = _sgd_record(model, grammar, n_train, n_test=n_test, lr=lr, momentum=momentum, weight_decay=weight_decay,
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
            for idx in _minibatches(n_train, batch_size, order, device):
                yield x_train[idx], y_train[idx]

    return _run_sgd(model, record, batches_of_epoch, lambda x, y: F.cross_entropy(model(x), y),
                    lambda: test_error(model, x_test, y_test), progress=progress, callback=callback)


def _sgd_record(model, grammar, n_train, *, n_test, lr, momentum, weight_decay, batch_size, max_epochs, cosine,
                loss_threshold, eval_every, online, seed_data, seed_order) -> RunRecord:
    """train_sgd's settings checked, and its empty record."""
    _check_budget(n_train=n_train, n_test=n_test, batch_size=batch_size, max_epochs=max_epochs,
                  eval_every=eval_every)
    return RunRecord("train_sgd", dict(model=type(model).__name__, **_grammar_config(grammar), n_train=n_train,
                                       n_test=n_test, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                       batch_size=batch_size, max_epochs=max_epochs, cosine=cosine,
                                       loss_threshold=loss_threshold, eval_every=eval_every, online=online,
                                       width=getattr(model, "width", None), norm=getattr(model, "norm", None)),
                     dict(rules=grammar.seed, data=seed_data, order=seed_order, model=getattr(model, "seed", None)))


def _run_sgd(model, record, batches_of_epoch, loss_fn, evaluate, *, progress, callback,
             combine=_whole_batch) -> RunRecord:
    """train_sgd's loop with the settings of record.config, then the final test error, evaluate()."""
    c = record.config
    started = time.perf_counter()
    try:
        _epochs(list(model.parameters()), batches_of_epoch, loss_fn, lr=c["lr"] * model.lr_scale,
                momentum=c["momentum"], weight_decay=c["weight_decay"], cosine=c["cosine"],
                max_epochs=c["max_epochs"], loss_threshold=c["loss_threshold"], evaluate=evaluate, record=record,
                eval_every=c["eval_every"], progress=progress, desc=f"sgd P={c['n_train']}", callback=callback,
                combine=combine)
    except KeyboardInterrupt:
        record.interrupted, record.stopped_by = True, "interrupted"
    # A diverged model's outputs are NaN, and argmax of NaN is an arbitrary class: no test error then.
    record.final_test_error = float("nan") if record.stopped_by == "diverged" else evaluate()
    return _finish(record, started)


def train_layerwise_sgd(model: HierarchicalCNN, grammar, n_train: int, *, n_test: int = 4096, hints: bool = False,
                        hint_weight: float = 1.0, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                        batch_size: int = 128, max_epochs: int = 100, cosine: bool = False,
                        loss_threshold: float = 1e-3, eval_every: int = 5, seed_data: int = 0, seed_order: int = 0,
                        seed_readout: int = 0, progress: bool = True, callback=None) -> RunRecord:
    """The reference's layerwise schedule: for l = 1..L, layers below l run frozen, a fresh readout
    (N(0,1), same norm as the model's) sits on the mean of layer l's output, and only layer l and that
    readout learn (max_epochs per layer). At the end the last readout becomes model.beta.

    hints=True adds hierarchical supervision: layer l < L also predicts, at each of its s^(L-l)
    positions, the latent symbol of generative level L-l there (a fresh linear head [H, v] / sqrt(H)),
    with cross-entropy weighted by hint_weight added to the class loss.
    Data and the readout and hint heads go to the device of the model's parameters; the heads are drawn on
    the CPU, so they are the same on every device.
    """
    if not isinstance(model, HierarchicalCNN):
        raise TypeError(f"rhmfast: train_layerwise_sgd trains a HierarchicalCNN, got {type(model).__name__}")
    _check_fits(model, grammar)
    _check_budget(n_train=n_train, n_test=n_test, batch_size=batch_size, max_epochs=max_epochs,
                  eval_every=eval_every)
    record = RunRecord("train_layerwise_sgd", dict(model="HierarchicalCNN", **_grammar_config(grammar),
                                                   n_train=n_train, n_test=n_test, hints=hints,
                                                   hint_weight=hint_weight, lr=lr, momentum=momentum,
                                                   weight_decay=weight_decay, batch_size=batch_size,
                                                   max_epochs=max_epochs, cosine=cosine,
                                                   loss_threshold=loss_threshold, eval_every=eval_every,
                                                   width=model.width, norm=model.norm),
                       dict(rules=grammar.seed, data=seed_data, order=seed_order, readout=seed_readout,
                            model=model.seed))
    device = device_of(model)
    (x_train, y_train, tree), (x_test, y_test, _) = grammar.split(n_train, n_test, seed=seed_data, return_tree=True,
                                                                  device=device)
    # On the CPU: the same minibatch order and initial heads on every device.
    order = torch.Generator().manual_seed(seed_order)
    readout_gen = torch.Generator().manual_seed(seed_readout)
    for p in model.parameters():
        p.requires_grad_(False)
    started = time.perf_counter()
    beta = None
    try:
        for l in range(1, model.L + 1):
            beta = torch.randn(model.width, model.n_classes, generator=readout_gen).to(device).requires_grad_()
            use_hints = hints and l < model.L
            hint_head = (torch.randn(model.width, grammar.v, generator=readout_gen).to(device).requires_grad_()
                         if use_hints else None)
            hint_targets = tree[model.L - l].long() if use_hints else None
            layer_params = model.layer_parameters(l)
            for p in layer_params:
                p.requires_grad_(True)

            def forward(tokens, l=l, beta=beta):
                with torch.no_grad():
                    below = tokens if l == 1 else model.layer_outputs(tokens, l - 1)[-1]
                h = model.layer(l, below)
                return h, model.readout(h, beta)

            def loss_fn(idx, y, forward=forward, hint_head=hint_head, hint_targets=hint_targets):
                h, logits = forward(x_train[idx])
                loss = F.cross_entropy(logits, y)
                if hint_head is not None:
                    hint_logits = h @ hint_head / math.sqrt(model.width)
                    loss = loss + hint_weight * F.cross_entropy(hint_logits.flatten(0, 1), hint_targets[idx].flatten())
                return loss

            def batches_of_epoch():
                for idx in _minibatches(n_train, batch_size, order, device):
                    yield idx, y_train[idx]

            @torch.no_grad()
            def evaluate(forward=forward):
                wrong = sum((forward(x_test[i:i + EVAL_BATCH])[1].argmax(1) != y_test[i:i + EVAL_BATCH]).sum().item()
                            for i in range(0, n_test, EVAL_BATCH))
                return wrong / n_test

            record.stopped_by = ""
            extra = [beta] + ([hint_head] if hint_head is not None else [])
            point = _epochs(layer_params + extra, batches_of_epoch, loss_fn, lr=lr * model.lr_scale,
                            momentum=momentum, weight_decay=weight_decay, cosine=cosine, max_epochs=max_epochs,
                            loss_threshold=loss_threshold, evaluate=evaluate, record=record, eval_every=eval_every,
                            progress=progress, desc=f"layer {l}/{model.L} P={n_train}", callback=callback,
                            labels=dict(layer=l))
            for p in layer_params:
                p.requires_grad_(False)
            record.stages.append(dict(layer=l, epochs=point["epoch"], train_loss=point["train_loss"],
                                      test_error=point["test_error"], stopped_by=record.stopped_by))
    except KeyboardInterrupt:
        record.interrupted, record.stopped_by = True, "interrupted"
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    if beta is not None and len(record.stages) == model.L:
        with torch.no_grad():
            model.beta.copy_(beta)
        record.final_test_error = test_error(model, x_test, y_test)
    elif record.stages:  # interrupted: the deepest finished stage is the model's best prediction
        record.final_test_error = record.stages[-1]["test_error"]
    return _finish(record, started)


def ren_stage_sizes(grammar, scale) -> dict[int, int]:
    """N^(l) = ceil(scale * m^l) fresh samples for stage l (Ren et al. 2026). scale: a float, or a
    fractions.Fraction for an exact ceiling (run configs pass P / sum_l m^l so)."""
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"rhmfast: scale must be finite and > 0, got {scale!r}")
    return {l: math.ceil(scale * grammar.m**l) for l in range(grammar.L, 0, -1)}


def fit_ridge(x: torch.Tensor, y: torch.Tensor, n_classes: int, lam: float, *, steps: int = 0,
              lr: float = 1.0) -> torch.Tensor:
    """argmin_W ½ mean‖e_y − W x‖² + (λ/2)‖W‖² for features x [N, D] (float64): closed form
    W = (Eᵀx/N)(xᵀx/N + λI)^-1 when steps == 0, else `steps` of gradient descent from W = 0."""
    targets = F.one_hot(y.long(), n_classes).to(x.dtype)
    n, dim = x.shape
    gram = x.t() @ x / n
    cross = targets.t() @ x / n
    if steps == 0:
        return torch.linalg.solve(gram + lam * torch.eye(dim, dtype=x.dtype, device=x.device), cross.t()).t()
    w = torch.zeros(n_classes, dim, dtype=x.dtype, device=x.device)
    for _ in range(steps):
        w -= lr * (w @ gram - cross + lam * w)
    return w


def train_ren_layerwise(learner: RenLayerwiseLearner, grammar, scale: float = 1.0, *, n_test: int = 4096,
                        lam: float | None = None, gd_steps: int = 0, gd_lr: float = 1.0, seed_data: int = 0,
                        n_diagnostic: int = 4096, progress: bool = True) -> RunRecord:
    """Ren et al.'s layerwise algorithm (2026): for l = L, ..., 1, draw N^(l) = ceil(scale*m^l) fresh
    samples, run the frozen levels below, take the first level-l patch and fit W^(l)
    by ridge regression onto the one-hot label, λ = 1/(v·m) by default (closed form, or gd_steps of
    gradient descent from W = 0). Each stage records its sample size and the mean distance ‖h − q^(l)‖₂
    between its normalised output on the first patch and the exact label posterior, on n_diagnostic
    samples independent of the training ones. Test, training and diagnostic samples are disjoint index
    ranges of the iid stream seed_data. An interrupted run keeps its finished stages and has no test error.
    Data is generated on the device of the learner's parameters.
    """
    _check_fits(learner, grammar, "learner")
    _check_budget(n_test=n_test, n_diagnostic=n_diagnostic)
    if gd_steps < 0:
        raise ValueError(f"rhmfast: gd_steps must be >= 0, got {gd_steps}")
    lam = 1.0 / (grammar.v * grammar.m) if lam is None else lam
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"rhmfast: lam must be finite and >= 0, got {lam!r}")
    sizes = ren_stage_sizes(grammar, scale)
    record = RunRecord("train_ren_layerwise", dict(model="RenLayerwiseLearner", **_grammar_config(grammar),
                                                   scale=float(scale), stage_sizes=list(sizes.values()), n_test=n_test,
                                                   lam=lam, gd_steps=gd_steps, features=learner.features,
                                                   sigma=learner.sigmas, n_diagnostic=n_diagnostic),
                       dict(rules=grammar.seed, data=seed_data, model=learner.seed))
    # Everything comes from the iid stream seed_data, in disjoint index ranges: the test set first, then
    # each stage's training samples and its diagnostic samples. Different seed_data never share samples.
    device = device_of(learner)
    x_test, y_test = grammar.sample(n_test, seed=seed_data, device=device)
    position = n_test
    started = time.perf_counter()
    s, L = grammar.s, grammar.L
    try:
        with tqdm(range(L, 0, -1), desc=f"ren scale={float(scale):g}", disable=not progress, leave=False) as bar:
            for l in bar:
                n = sizes[l]
                x, y = grammar.sample(n, seed=seed_data, start=position, device=device)
                width = s ** (L - l + 1)  # tokens under the first level-l patch
                with torch.no_grad():
                    h = learner.embeddings(x[:, :width], down_to=l)[-1]
                    features = learner.patch_features(l, h)[:, 0]
                    w = fit_ridge(features, y, grammar.n_classes, lam, steps=gd_steps, lr=gd_lr)
                if not torch.isfinite(w).all():  # gradient descent with too large a step, say
                    record.stopped_by = "diverged"
                    break
                learner.W[l - 1].copy_(w)
                distance = posterior_distance(learner, grammar, l, n=n_diagnostic, seed=seed_data, start=position + n)
                position += n + n_diagnostic
                record.samples_seen += n  # counted with its stage, so an interrupted record adds up
                record.stages.append(dict(level=l, n_samples=n, posterior_distance=distance))
    except KeyboardInterrupt:
        record.interrupted, record.stopped_by = True, "interrupted"
    if not record.interrupted and record.stopped_by != "diverged":
        record.stopped_by = "done"
        record.final_test_error = test_error(learner, x_test, y_test)
        record.curve.append(dict(stage=1, samples_seen=record.samples_seen, test_error=record.final_test_error))
    return _finish(record, started)
