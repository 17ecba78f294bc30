"""The record every trainer returns: what a run did, its seeds, its curve and per-stage results."""
from __future__ import annotations

import dataclasses
import time


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


def grammar_config(grammar) -> dict:
    return dict(v=grammar.v, m=grammar.m, s=grammar.s, L=grammar.L, n_classes=grammar.n_classes,
                rules=grammar.sampler, seed_rules=grammar.seed)


def finish(record: RunRecord, started: float) -> RunRecord:
    record.wall_time_s = time.perf_counter() - started
    record.samples_per_s = record.samples_seen / record.wall_time_s if record.wall_time_s > 0 else 0.0
    return record
