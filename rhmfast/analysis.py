"""Analysis of sample-complexity runs (SPEC §5): P*(ε), its bootstrap interval over seeds, and plots."""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np


def threshold(n_classes: int, eps: float | str = 0.1) -> float:
    """ε as a number: a float in (0, 1), or "rand/10" for (1 − 1/n_c)/10."""
    if eps == "rand/10":
        return (1.0 - 1.0 / n_classes) / 10.0
    if isinstance(eps, str) or not 0 < eps < 1:
        raise ValueError(f"rhmfast: eps must be a float in (0, 1) or 'rand/10', got {eps!r}")
    return float(eps)


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


def plot_curves(curves: dict, path: str, *, xscale: dict | None = None, xlabel: str = "P", eps: float | None = None,
                floor: float | None = None, title: str = "") -> None:
    """Test error against P (divided by xscale[name] when given) for curves {name: (ps, errors [seeds, P])}:
    mean over seeds with min–max band, log-log axes, zero errors floored at `floor` (1/P_test)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, (ps, errors) in curves.items():
        errors = np.atleast_2d(np.asarray(errors, dtype=float))
        if floor is not None:
            errors = np.maximum(errors, floor)
        x = np.asarray(ps, dtype=float) / (xscale[name] if xscale else 1.0)
        ax.plot(x, np.nanmean(errors, axis=0), marker="o", ms=3, label=name)
        ax.fill_between(x, np.nanmin(errors, axis=0), np.nanmax(errors, axis=0), alpha=0.15)
    if eps is not None:
        ax.axhline(eps, color="gray", ls="--", lw=0.8, label=f"ε = {eps:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test error")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
