"""A sweep's runs as error curves: rows (one per finished run) validated and grouped by setting.

Rows are mappings as a sweep's result store yields them, with at least the keys learner (str), v, n_classes,
m, L, s, P (the training-set size used), seed, n_test (ints) and test_error (float in [0, 1]; NaN counts as a
missing run), and optionally bayes_error (the Bayes-optimal error on the run's test set, in [0, 1]; None or NaN:
not known). A setting is (learner, v, n_classes, s, m, L); its runs make an error matrix [seeds, P] with NaN
where a run is missing, and its floor is the mean Bayes error of its runs (0 where none is known: classifying
an RHM's strings has Bayes error 0). The P* estimation (``pstar``) and the plots (``plots``) both start from here.
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

LEARNER_NAMES = {"hcnn": "hCNN (SGD)", "hcnn-layerwise": "hCNN (layerwise SGD)",
                 "hcnn-layerwise_hints": "hCNN (layerwise SGD, hints)", "fc": "fully connected",
                 "residual": "residual layerwise", "residual-e2e_all": "residual, end to end (all labels)",
                 "residual-e2e_top": "residual, end to end (top labels)", "mlp": "shallow MLP",
                 "ren": "Ren layerwise", **{f"ren-{kind}": f"Ren layerwise ({kind})" for kind in
                                            ("tensor", "rff", "kernel", "tensor+kernel", "cluster")}}
_INT_KEYS = ("v", "n_classes", "m", "L", "s", "P", "seed", "n_test")


def threshold(n_classes: int, eps: float | str = 0.1, floor: float = 0.0) -> float:
    """The test error below which a curve has reached P*: ε as a number, a float in (0, 1) or "rand/10" for
    ε_rand/10 with ε_rand = 1 − 1/n_c the error of chance. Above a floor f (the Bayes-optimal error, which no
    learner goes below), ε is the excess error as a fraction of the room above the floor: f + ε(1 − f) for a
    float, f + (ε_rand − f)/10 for "rand/10"; f = 0 gives ε itself."""
    if eps == "rand/10":
        return floor + (1.0 - 1.0 / n_classes - floor) / 10.0
    if isinstance(eps, str) or not 0 < eps < 1:
        raise ValueError(f"rhmfast: eps must be a float in (0, 1) or 'rand/10', got {eps!r}")
    return floor + float(eps) * (1.0 - floor)


@dataclass
class Setting:
    """The runs of one setting: errors, n_test and Bayes errors [seeds, P], NaN where a run (or its Bayes
    error) is missing."""
    learner: str
    v: int
    n_classes: int
    s: int
    m: int
    L: int
    ps: np.ndarray
    seeds: list
    errors: np.ndarray
    n_test: np.ndarray
    bayes_errors: np.ndarray

    @property
    def n_c_m_L(self) -> int:
        return self.n_classes * self.m**self.L

    @property
    def floor(self) -> float:
        """The Bayes-optimal error of the setting: the mean of its runs' known Bayes errors (each measured
        on the run's own test set), 0.0 where none is known."""
        known = self.bayes_errors[~np.isnan(self.bayes_errors)]
        return float(known.mean()) if known.size else 0.0

    def floored(self) -> np.ndarray:
        """Errors with zeros raised to 1/n_test of their run, for log axes."""
        return np.maximum(self.errors, 1.0 / self.n_test)

    def stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per P: mean, min and max test error over the finished runs, and how many there are."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return (np.nanmean(self.errors, axis=0), np.nanmin(self.errors, axis=0),
                    np.nanmax(self.errors, axis=0), np.sum(~np.isnan(self.errors), axis=0))


def _as_int(row: Mapping, key: str, i: int) -> int:
    value = row[key]
    if isinstance(value, bool) or not (isinstance(value, numbers.Integral)
                                       or (isinstance(value, float) and value.is_integer())):
        raise ValueError(f"rhmfast: row {i}: {key} must be an integer, got {value!r}")
    return int(value)


def _check_row(row, i: int) -> tuple:
    """(setting key, seed, P, test_error, n_test, bayes_error (NaN: not known)) of a validated row."""
    if not isinstance(row, Mapping):
        raise ValueError(f"rhmfast: row {i} must be a mapping, got {type(row).__name__}")
    missing = [k for k in ("learner", "test_error", *_INT_KEYS) if k not in row]
    if missing:
        raise ValueError(f"rhmfast: row {i} lacks the keys {missing}")
    if not isinstance(row["learner"], str) or not row["learner"]:
        raise ValueError(f"rhmfast: row {i}: learner must be a non-empty string, got {row['learner']!r}")
    ints = {k: _as_int(row, k, i) for k in _INT_KEYS}
    for k in ("v", "n_classes", "m", "L", "s", "P", "n_test"):
        if ints[k] < 1:
            raise ValueError(f"rhmfast: row {i}: {k} must be >= 1, got {ints[k]}")
    error = row["test_error"]
    if isinstance(error, bool) or not isinstance(error, numbers.Real) or not (math.isnan(error) or 0 <= error <= 1):
        raise ValueError(f"rhmfast: row {i}: test_error must be a number in [0, 1] (NaN: missing), got {error!r}")
    bayes = row.get("bayes_error")
    bayes = math.nan if bayes is None else bayes
    if isinstance(bayes, bool) or not isinstance(bayes, numbers.Real) or not (math.isnan(bayes) or 0 <= bayes <= 1):
        raise ValueError(f"rhmfast: row {i}: bayes_error must be a number in [0, 1] (None or NaN: not known), got "
                         f"{row.get('bayes_error')!r}")
    key = (row["learner"], ints["v"], ints["n_classes"], ints["s"], ints["m"], ints["L"])
    return key, ints["seed"], ints["P"], float(error), ints["n_test"], float(bayes)


def settings_of(rows: Iterable[Mapping]) -> list[Setting]:
    """Validated rows grouped by setting: learners in order of first appearance, then by (v, n_classes, s,
    n_c m^L, m, L). Raises ValueError on a malformed row or a run that appears twice."""
    runs: dict[tuple, dict[tuple, tuple]] = {}
    learners: dict[str, int] = {}
    for i, row in enumerate(rows):
        key, seed, p, error, n_test, bayes = _check_row(row, i)
        by_run = runs.setdefault(key, {})
        if (seed, p) in by_run:
            first, first_error, first_n_test, _ = by_run[seed, p]
            # Two configs can train on the same P (the Ren learner's stage sizes round up): the same run,
            # counted once. Different results for one (seed, P) are an error in the rows.
            if (first_error == error or (math.isnan(first_error) and math.isnan(error))) and first_n_test == n_test:
                continue
            raise ValueError(f"rhmfast: row {i} repeats the run of row {first} with another result: (learner, v, "
                             f"n_classes, s, m, L) = {key}, seed {seed}, P {p}")
        by_run[seed, p] = (i, error, n_test, bayes)
        learners.setdefault(key[0], len(learners))
    out = []
    for key in sorted(runs, key=lambda k: (learners[k[0]], k[1], k[2], k[3], k[2] * k[4]**k[5], k[4], k[5])):
        by_run = runs[key]
        seeds = sorted({seed for seed, _ in by_run})
        ps = sorted({p for _, p in by_run})
        errors = np.full((len(seeds), len(ps)), np.nan)
        n_test = np.full((len(seeds), len(ps)), np.nan)
        bayes_errors = np.full((len(seeds), len(ps)), np.nan)
        for (seed, p), (_, error, n, bayes) in by_run.items():
            at = seeds.index(seed), ps.index(p)
            errors[at], n_test[at], bayes_errors[at] = error, n, bayes
        out.append(Setting(*key, ps=np.asarray(ps, dtype=float), seeds=seeds, errors=errors, n_test=n_test,
                           bayes_errors=bayes_errors))
    return out


def learner_label(learner: str) -> str:
    """The name a table or a figure shows for a learner."""
    return LEARNER_NAMES.get(learner, learner)


def interval_text(fit: Mapping) -> str:
    """A fitted slope's bootstrap interval as the figures and tables print it."""
    return f"[{fit['low']:.2f}, {fit['high']:.2f}]" if math.isfinite(fit["low"]) else "(no interval)"
