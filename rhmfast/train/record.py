"""The record every trainer returns: what a run did, its seeds, its curve and per-stage results; and
``BestTestLoss``, the 2024 reference's 'best' model as a train_sgd callback."""
from __future__ import annotations

import copy
import dataclasses
import math
import time


@dataclasses.dataclass
class RunRecord:
    """What a training run did: its configuration and seeds, the curve of (epoch, samples seen, train
    loss, test error, and for train_sgd test loss and test accuracy), the final test error, timing, and
    per-stage results of layerwise trainers. bayes_error (train_sgd's): the Bayes-optimal error on the test
    set, the floor no learner goes below: the task's (``LastToken.bayes_error``), 0.0 for the classification
    of an RHM (its grammar is unambiguous: a string has one label), NaN where it is not known."""
    trainer: str
    config: dict
    seeds: dict
    curve: list = dataclasses.field(default_factory=list)
    stages: list = dataclasses.field(default_factory=list)
    final_test_error: float = float("nan")
    bayes_error: float = float("nan")
    samples_seen: int = 0
    wall_time_s: float = 0.0
    samples_per_s: float = 0.0
    interrupted: bool = False
    stopped_by: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The data's options with their defaults: a record's config names one only where it differs, so a
# classification run on the plain RHM has the record (and the checkpoint identity) it had before them.
DATA_OPTIONS = dict(task="classify", context=None, production="uniform", zipf_exponent=None, zipf_levels=None,
                    sparsity=0)


def grammar_config(data) -> dict:
    """The grammar's parameters (of ``data.grammar`` for a task such as ``LastToken``), and where they differ
    from DATA_OPTIONS the task and its context and the grammar's variants (Zipf productions, sparsity)."""
    grammar = getattr(data, "grammar", data)
    production = getattr(grammar, "production", "uniform")
    options = dict(task=getattr(data, "task", "classify"), context=getattr(data, "context", None),
                   production=production, sparsity=getattr(grammar, "sparsity", 0))
    if production != "uniform":  # the Zipf law's parameters mean something only for it
        levels = getattr(grammar, "zipf_levels", None)
        options.update(zipf_exponent=getattr(grammar, "zipf_exponent", None),
                       zipf_levels=None if levels is None else list(levels))  # a list, as a sweep's config
    return dict(v=grammar.v, m=grammar.m, s=grammar.s, L=grammar.L, n_classes=grammar.n_classes,
                rules=grammar.sampler, seed_rules=grammar.seed,
                **{key: value for key, value in options.items() if value != DATA_OPTIONS[key]})


def finish(record: RunRecord, started: float, earlier_s: float = 0.0) -> RunRecord:
    """Wall time since `started` (plus earlier_s, the time of the run before a resume) and throughput."""
    record.wall_time_s = time.perf_counter() - started + earlier_s
    record.samples_per_s = record.samples_seen / record.wall_time_s if record.wall_time_s > 0 else 0.0
    return record


class BestTestLoss:
    """The 2024 reference's 'best' (main.py, lines 70-74) as a ``train_sgd`` callback: at each evaluation
    whose test loss is below the best so far (strictly), ``best`` becomes dict(epoch, loss, acc, model)
    with the point's epoch, test loss and test accuracy and a deep copy of model.state_dict().

    An epoch-0 point (train_sgd's eval_at_start=True) starts it as the reference's init.py ``init_output``
    does: epoch 0, that test loss and accuracy, model None. Without one it starts at loss inf, acc nan.
    epochs: consider only points of these epochs (the reference's print checkpoints; train_sgd also
    evaluates at the stopping epoch, which the reference does not unless it is a checkpoint); None: all.
    then: a callback called after the update with the same point.

    It has state_dict/load_state_dict, so a train_sgd checkpoint saves and restores it (and then's state,
    when then has them too): a resumed run ends with the same best as an uninterrupted one."""

    def __init__(self, model, epochs=None, then=None):
        self.model, self.then = model, then
        self.epochs = None if epochs is None else set(epochs)
        self.best = dict(epoch=0, model=None, loss=math.inf, acc=math.nan)

    def __call__(self, point: dict) -> None:
        if point["epoch"] == 0:
            self.best = dict(epoch=0, model=None, loss=point["test_loss"], acc=point["test_accuracy"])
        elif (self.epochs is None or point["epoch"] in self.epochs) and point["test_loss"] < self.best["loss"]:
            self.best = dict(epoch=point["epoch"], model=copy.deepcopy(self.model.state_dict()),
                             loss=point["test_loss"], acc=point["test_accuracy"])
        if self.then is not None:
            self.then(point)

    def state_dict(self) -> dict:
        then = self.then.state_dict() if hasattr(self.then, "state_dict") else None
        return dict(best=dict(self.best), then=then)

    def load_state_dict(self, state: dict) -> None:
        best = dict(state["best"])
        if best["model"] is not None:  # a checkpoint is read onto the CPU: back where the model lives
            here = {k: v.device for k, v in self.model.state_dict().items()}
            best["model"] = type(best["model"])((k, v.to(here.get(k, v.device))) for k, v in best["model"].items())
        self.best = best
        if state.get("then") is not None and hasattr(self.then, "load_state_dict"):
            self.then.load_state_dict(state["then"])
