"""Sample complexity from a sweep's runs: P*(ε), its bootstrap interval over seeds, and the scaling of P*
with n_c·m^L.

    crossing(ps, errors, eps)              where one error curve falls below ε, interpolated in log P
    estimate_pstar(ps, errors, eps)        P*(ε) of the seed-averaged curve with its bootstrap interval
    pstar_table(rows, eps)                 P*(ε) per setting with its bootstrap interval over seeds
    fit_scaling(rows, eps, learner=...)    least-squares power law P* = c (n_c m^L)^a over one learner's settings

Rows as in ``rhmfast.studies.curves``; figures are ``plots``' and files ``report``'s. Where a setting has a
floor (its runs' Bayes-optimal error, e.g. last-token prediction), P*(ε) is where the excess error over the
floor falls below ε of the room above it (``curves.threshold``); without one, where the error falls below ε.
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Mapping

import numpy as np

from rhmfast.studies.curves import settings_of, threshold


def _crossings(ps: np.ndarray, curves: np.ndarray, eps: float) -> np.ndarray:
    """crossing() of every row of curves [n, len(ps)] at once; ps validated. NaN points are skipped."""
    n, k = curves.shape
    observed = ~np.isnan(curves)
    below = observed & (curves < eps)
    first = below.argmax(axis=1)  # the first point below eps (0 where there is none: masked below)
    # the last observed point before it: every observed point before the first one below is at or above eps
    last_observed = np.maximum.accumulate(np.where(observed, np.arange(k), -1), axis=1)
    rows = np.arange(n)
    before = np.where(first > 0, last_observed[rows, np.maximum(first - 1, 0)], -1)
    logp = np.log(ps)
    e0 = curves[rows, np.maximum(before, 0)]
    e1 = curves[rows, first]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (e0 - eps) / (e0 - e1)
        interpolated = np.exp(logp[np.maximum(before, 0)] + t * (logp[first] - logp[np.maximum(before, 0)]))
    out = np.where(before >= 0, interpolated, ps[first])
    return np.where(below.any(axis=1), out, math.inf)


def crossing(ps, errors, eps: float) -> float:
    """The smallest P at which the error curve falls below eps, interpolated linearly in log P between
    the last grid point at or above eps and the first one below it. ps increasing. Returns ps[0] when the
    first point is already below eps (P* <= ps[0]) and inf when no point is. NaN points (no finished run
    at that P) are skipped: the interpolation runs between the observed neighbours."""
    ps = np.asarray(ps, dtype=float)
    errors = np.asarray(errors, dtype=float)
    if ps.ndim != 1 or ps.shape != errors.shape or ps.size == 0:
        raise ValueError(f"rhmfast: ps and errors must be 1-D of the same non-zero length, got {ps.shape} and "
                         f"{errors.shape}")
    if np.any(np.diff(ps) <= 0) or ps[0] <= 0:
        raise ValueError("rhmfast: ps must be positive and strictly increasing")
    return float(_crossings(ps, errors[None], eps)[0])


def _bootstrap_pstars(ps: np.ndarray, errors: np.ndarray, eps: float, n_boot: int,
                      rng: np.random.Generator) -> np.ndarray:
    """P* of the mean of n_seeds seeds drawn with replacement, n_boot times: [n_boot], inf where not reached."""
    picks = rng.integers(0, errors.shape[0], size=(n_boot, errors.shape[0]))
    with warnings.catch_warnings():  # a resample of only missing runs gives a NaN mean: never below eps
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(errors[picks], axis=1)
    return _crossings(ps, means, eps)


def _check_boot(n_boot: int, level: float) -> None:
    if not isinstance(n_boot, numbers.Integral) or n_boot < 1:
        raise ValueError(f"rhmfast: n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"rhmfast: level must be in (0, 1), got {level!r}")


def estimate_pstar(ps, errors, eps: float, *, n_boot: int = 1000, seed: int = 0, level: float = 0.9) -> dict:
    """P*(eps) of the seed-averaged curve, with a bootstrap interval over seeds.

    errors [n_seeds, len(ps)] (NaN = missing run, ignored in the mean). The interval: P* of the mean of
    n_seeds seeds drawn with replacement, n_boot times; its (1-level)/2 and (1+level)/2 quantiles (inf
    when the resampled curve never falls below eps). Returns dict(pstar, low, high, reached)."""
    _check_boot(n_boot, level)
    errors = np.atleast_2d(np.asarray(errors, dtype=float))
    if errors.shape[1] != len(ps):
        raise ValueError(f"rhmfast: errors must have shape [n_seeds, {len(ps)}], got {list(errors.shape)}")
    with warnings.catch_warnings():  # a P with no finished run has a NaN mean: skipped by crossing
        warnings.simplefilter("ignore", RuntimeWarning)
        pstar = crossing(ps, np.nanmean(errors, axis=0), eps)
    boots = _bootstrap_pstars(np.asarray(ps, dtype=float), errors, eps, n_boot, np.random.default_rng(seed))
    # inverted_cdf picks order statistics, so infinite P* stay inf instead of becoming inf - inf = NaN.
    low, high = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return dict(pstar=pstar, low=float(low), high=float(high), reached=math.isfinite(pstar))


def pstar_table(rows: Iterable[Mapping], eps: float | str, *, n_boot: int = 1000, level: float = 0.9,
                seed: int = 0) -> list[dict]:
    """P*(ε) of every setting (learner, v, n_classes, s, m, L) with its bootstrap interval over seeds.

    eps: a float in (0, 1) or "rand/10" (see threshold; per setting from its n_classes and floor). One dict per
    setting, learners in order of first appearance, then by (v, n_classes, s, n_c m^L, m, L): learner, v,
    n_classes, s, m, L, n_c_m_L (= n_classes·m^L), n_seeds, grid (the P values run, ascending), floor (the
    setting's Bayes-optimal error, 0 where none is known), eps (the test error threshold used), level, pstar,
    low, high, reached (as estimate_pstar; inf: not reached within the grid), upper_bound
    (True when the mean error at the first grid point is already below ε: pstar is then grid[0], an upper
    bound), ratio (= pstar / n_c_m_L), and per grid point mean_error, min_error, max_error over the finished
    runs and n_runs (how many finished). Raises ValueError on malformed rows."""
    _check_boot(n_boot, level)
    table = []
    for x in settings_of(rows):
        e = threshold(x.n_classes, eps, x.floor)
        est = estimate_pstar(x.ps, x.errors, e, n_boot=n_boot, seed=seed, level=level)
        mean, low, high, count = x.stats()
        observed = mean[~np.isnan(mean)]
        table.append(dict(learner=x.learner, v=x.v, n_classes=x.n_classes, s=x.s, m=x.m, L=x.L, n_c_m_L=x.n_c_m_L,
                          n_seeds=len(x.seeds), grid=[int(p) for p in x.ps], floor=x.floor, eps=e, level=level,
                          **est,
                          upper_bound=bool(observed.size and observed[0] < e),
                          ratio=est["pstar"] / x.n_c_m_L, mean_error=mean.tolist(), min_error=low.tolist(),
                          max_error=high.tolist(), n_runs=count.tolist()))
    return table


def _masked_slopes(x: np.ndarray, y: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares slope and intercept of y against x over the points where use is True, row by row
    (x [k]; y, use [n, k]); valid: rows with at least 2 points at distinct x."""
    w = use.astype(float)
    count = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        x_mean = (w * x).sum(axis=1) / count
        y_mean = np.where(use, y, 0.0).sum(axis=1) / count
        dx = np.where(use, x - x_mean[:, None], 0.0)
        sxx = (dx * dx).sum(axis=1)
        slope = (dx * np.where(use, y - y_mean[:, None], 0.0)).sum(axis=1) / sxx
    valid = (count >= 2) & (sxx > 1e-12 * np.maximum(1.0, (w * x * x).sum(axis=1)))
    return slope, y_mean - slope * x_mean, valid


def fit_scaling(rows: Iterable[Mapping], eps: float | str, *, learner: str, n_boot: int = 1000, level: float = 0.9,
                seed: int = 0) -> dict:
    """Least-squares fit of log P* against log(n_c·m^L) over the settings of one learner that reach P*(ε)
    (each setting's threshold as in pstar_table): P* = prefactor · (n_c m^L)^slope.

    The interval of the slope: each of n_boot resamples draws the seeds of every setting with replacement,
    independently per setting, recomputes every setting's P*, and refits over the settings that reach it;
    resamples where fewer than 2 settings (at distinct n_c m^L) reach P* are dropped (n_boot_used counts the
    rest); low and high are their (1-level)/2 and (1+level)/2 quantiles. Settings reached only at their first
    grid point enter with P* = grid[0] (an upper bound).

    Returns dict(learner, eps, level, slope, low, high, intercept (natural log of prefactor), prefactor,
    n_settings, n_reached, n_boot, n_boot_used, reason, settings=[dict(n_c_m_L, pstar) per setting]). With
    fewer than 2 settings reaching P* (at distinct n_c m^L) the slope and the rest are NaN and reason says why
    (reason is "" after a fit). Raises ValueError on malformed rows or a learner with no runs."""
    _check_boot(n_boot, level)
    rows = list(rows)
    settings = [x for x in settings_of(rows) if x.learner == learner]
    if not settings:
        known = sorted({r["learner"] for r in rows})
        raise ValueError(f"rhmfast: no runs of learner {learner!r}; the rows hold {known}")
    x = np.log([float(s.n_c_m_L) for s in settings])
    eps_values = [threshold(s.n_classes, eps, s.floor) for s in settings]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        point = np.array([crossing(s.ps, np.nanmean(s.errors, axis=0), e) for s, e in zip(settings, eps_values)])
    reached = np.isfinite(point)
    nan = math.nan
    out = dict(learner=learner, eps=eps, level=level, slope=nan, low=nan, high=nan, intercept=nan, prefactor=nan,
               n_settings=len(settings), n_reached=int(reached.sum()), n_boot=n_boot, n_boot_used=0, reason="",
               settings=[dict(n_c_m_L=s.n_c_m_L, pstar=float(p)) for s, p in zip(settings, point)])
    y = np.log(np.where(reached, point, 1.0))[None]
    slope, intercept, valid = _masked_slopes(x, y, reached[None])
    if not valid[0]:
        out["reason"] = (f"{out['n_reached']} of {len(settings)} settings reach P*; a fit needs 2"
                         if out["n_reached"] < 2 else "the settings that reach P* share one n_c m^L")
        return out
    out.update(slope=float(slope[0]), intercept=float(intercept[0]), prefactor=math.exp(intercept[0]))
    streams = np.random.SeedSequence(seed).spawn(len(settings))
    boots = np.stack([_bootstrap_pstars(s.ps, s.errors, e, n_boot, np.random.default_rng(stream))
                      for s, e, stream in zip(settings, eps_values, streams)], axis=1)  # [n_boot, settings]
    finite = np.isfinite(boots)
    slopes, _, valid = _masked_slopes(x, np.log(np.where(finite, boots, 1.0)), finite)
    out["n_boot_used"] = int(valid.sum())
    if valid.any():
        low, high = np.quantile(slopes[valid], [(1 - level) / 2, (1 + level) / 2])
        out.update(low=float(low), high=float(high))
    return out
