"""Layerwise SGD of the hCNN (the reference's CNNLayerWise schedule), optionally with hint supervision of
the intermediate layers by the latent symbols of their level."""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from rhmfast.models import HierarchicalCNN, device_of
from rhmfast.train.loop import EVAL_BATCH, check_budget, check_fits, minibatches, run_epochs, test_error
from rhmfast.train.record import RunRecord, finish, grammar_config


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
    check_fits(model, grammar)
    check_budget(n_train=n_train, n_test=n_test, batch_size=batch_size, max_epochs=max_epochs,
                  eval_every=eval_every)
    record = RunRecord("train_layerwise_sgd", dict(model="HierarchicalCNN", **grammar_config(grammar),
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
                for idx in minibatches(n_train, batch_size, order, device):
                    yield idx, y_train[idx]

            @torch.no_grad()
            def evaluate(forward=forward):
                wrong = sum((forward(x_test[i:i + EVAL_BATCH])[1].argmax(1) != y_test[i:i + EVAL_BATCH]).sum().item()
                            for i in range(0, n_test, EVAL_BATCH))
                return wrong / n_test

            record.stopped_by = ""
            extra = [beta] + ([hint_head] if hint_head is not None else [])
            point = run_epochs(layer_params + extra, batches_of_epoch, loss_fn, lr=lr * model.lr_scale,
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
    return finish(record, started)
