"""Analysis of sample-complexity runs: P*(ε), its bootstrap interval over seeds, the scaling of P*
with n_c·m^L, plots and tables.

The sweep-level entry points take rows, one per finished run, as a sweep's result store yields them: mappings
with at least the keys learner (str), v, n_classes, m, L, s, P (the training-set size used), seed, n_test (ints)
and test_error (float in [0, 1]; NaN counts as a missing run). A setting is (learner, v, n_classes, s, m, L);
its runs make an error matrix [seeds, P] with NaN where a run is missing.

    pstar_table(rows, eps)                 P*(ε) per setting with its bootstrap interval over seeds
    fit_scaling(rows, eps, learner=...)    least-squares power law P* = c (n_c m^L)^a over one learner's settings
    plot_error_vs_p, plot_collapse, plot_pstar_scaling   figures, each as PNG and PDF
    write_tables(pstars, fits, out_dir)    pstar.csv, pstar.md, curves.csv, scaling.csv
    write_report(rows, out_dir, eps)       all of the above; returns {file name: path}
"""
from __future__ import annotations

import csv
import math
import numbers
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

LEARNER_NAMES = {"hcnn": "hCNN (SGD)", "ren": "Ren layerwise", "fc": "fully connected"}
_INT_KEYS = ("v", "n_classes", "m", "L", "s", "P", "seed", "n_test")


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


# ---------------------------------------------------------------------------------------------------------------
# Rows of a sweep, grouped into settings


@dataclass
class _Setting:
    """The runs of one setting: errors and n_test [seeds, P], NaN where a run is missing."""
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

    @property
    def n_c_m_L(self) -> int:
        return self.n_classes * self.m**self.L

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
    """(setting key, seed, P, test_error, n_test) of a validated row."""
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
    key = (row["learner"], ints["v"], ints["n_classes"], ints["s"], ints["m"], ints["L"])
    return key, ints["seed"], ints["P"], float(error), ints["n_test"]


def _settings(rows: Iterable[Mapping]) -> list[_Setting]:
    """Validated rows grouped by setting: learners in order of first appearance, then by (v, n_classes, s,
    n_c m^L, m, L). Raises ValueError on a malformed row or a run that appears twice."""
    runs: dict[tuple, dict[tuple, tuple]] = {}
    learners: dict[str, int] = {}
    for i, row in enumerate(rows):
        key, seed, p, error, n_test = _check_row(row, i)
        by_run = runs.setdefault(key, {})
        if (seed, p) in by_run:
            first, first_error, first_n_test = by_run[seed, p]
            # Two configs can train on the same P (the Ren learner's stage sizes round up): the same run,
            # counted once. Different results for one (seed, P) are an error in the rows.
            if (first_error == error or (math.isnan(first_error) and math.isnan(error))) and first_n_test == n_test:
                continue
            raise ValueError(f"rhmfast: row {i} repeats the run of row {first} with another result: (learner, v, "
                             f"n_classes, s, m, L) = {key}, seed {seed}, P {p}")
        by_run[seed, p] = (i, error, n_test)
        learners.setdefault(key[0], len(learners))
    out = []
    for key in sorted(runs, key=lambda k: (learners[k[0]], k[1], k[2], k[3], k[2] * k[4]**k[5], k[4], k[5])):
        by_run = runs[key]
        seeds = sorted({seed for seed, _ in by_run})
        ps = sorted({p for _, p in by_run})
        errors = np.full((len(seeds), len(ps)), np.nan)
        n_test = np.full((len(seeds), len(ps)), np.nan)
        for (seed, p), (_, error, n) in by_run.items():
            errors[seeds.index(seed), ps.index(p)] = error
            n_test[seeds.index(seed), ps.index(p)] = n
        out.append(_Setting(*key, ps=np.asarray(ps, dtype=float), seeds=seeds, errors=errors, n_test=n_test))
    return out


def _label(setting: _Setting, varies: set[str]) -> str:
    """"m=2, L=4", with v, n_c and s added where they vary among the settings shown together."""
    parts = [f"{k}={getattr(setting, k)}" for k in ("v", "n_classes", "s") if k in varies]
    return ", ".join([f"m={setting.m}", f"L={setting.L}", *parts]).replace("n_classes=", "n_c=")


def _varying(settings: list[_Setting]) -> set[str]:
    return {k for k in ("v", "n_classes", "s") if len({getattr(x, k) for x in settings}) > 1}


def _learner_name(learner: str) -> str:
    return LEARNER_NAMES.get(learner, learner)


# ---------------------------------------------------------------------------------------------------------------
# P* per setting, and its scaling with n_c m^L


def pstar_table(rows: Iterable[Mapping], eps: float | str, *, n_boot: int = 1000, level: float = 0.9,
                seed: int = 0) -> list[dict]:
    """P*(ε) of every setting (learner, v, n_classes, s, m, L) with its bootstrap interval over seeds.

    eps: a float in (0, 1) or "rand/10" (see threshold; then per setting from its n_classes). One dict per
    setting, learners in order of first appearance, then by (v, n_classes, s, n_c m^L, m, L): learner, v,
    n_classes, s, m, L, n_c_m_L (= n_classes·m^L), n_seeds, grid (the P values run, ascending), eps (the number
    used), level, pstar, low, high, reached (as estimate_pstar; inf: not reached within the grid), upper_bound
    (True when the mean error at the first grid point is already below ε: pstar is then grid[0], an upper
    bound), ratio (= pstar / n_c_m_L), and per grid point mean_error, min_error, max_error over the finished
    runs and n_runs (how many finished). Raises ValueError on malformed rows."""
    _check_boot(n_boot, level)
    table = []
    for x in _settings(rows):
        e = threshold(x.n_classes, eps)
        est = estimate_pstar(x.ps, x.errors, e, n_boot=n_boot, seed=seed, level=level)
        mean, low, high, count = x.stats()
        observed = mean[~np.isnan(mean)]
        table.append(dict(learner=x.learner, v=x.v, n_classes=x.n_classes, s=x.s, m=x.m, L=x.L, n_c_m_L=x.n_c_m_L,
                          n_seeds=len(x.seeds), grid=[int(p) for p in x.ps], eps=e, level=level, **est,
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
    """Least-squares fit of log P* against log(n_c·m^L) over the settings of one learner that reach P*(ε):
    P* = prefactor · (n_c m^L)^slope.

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
    settings = [x for x in _settings(rows) if x.learner == learner]
    if not settings:
        known = sorted({r["learner"] for r in rows})
        raise ValueError(f"rhmfast: no runs of learner {learner!r}; the rows hold {known}")
    x = np.log([float(s.n_c_m_L) for s in settings])
    eps_values = [threshold(s.n_classes, eps) for s in settings]
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


# ---------------------------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _draw_curve(ax, x, errors: np.ndarray, **style) -> bool:
    """Mean over seeds (rows of errors) with a min–max band; P values with no finished run are left out.
    Returns whether anything was drawn (a learner whose every run diverged has nothing to draw)."""
    keep = ~np.all(np.isnan(errors), axis=0)
    if not keep.any():
        return False
    x, errors = np.asarray(x, dtype=float)[keep], errors[:, keep]
    line, = ax.plot(x, np.nanmean(errors, axis=0), marker="o", ms=3, **style)
    ax.fill_between(x, np.nanmin(errors, axis=0), np.nanmax(errors, axis=0), alpha=0.15, color=line.get_color())
    return True


def _nothing_to_draw(ax) -> None:
    ax.text(0.5, 0.5, "no finished run with a test error", ha="center", va="center", transform=ax.transAxes)


def _eps_lines(ax, values) -> None:
    for e in sorted(set(values)):
        ax.axhline(e, color="gray", ls="--", lw=0.8, label=f"ε = {e:.3g}")


def plot_curves(curves: dict, path: str, *, xscale: dict | None = None, xlabel: str = "P", eps: float | None = None,
                floor: float | None = None, title: str = "") -> None:
    """Test error against P (divided by xscale[name] when given) for curves {name: (ps, errors [seeds, P])}:
    mean over seeds with min–max band, log-log axes, zero errors floored at `floor` (1/P_test)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    drawn = False
    for name, (ps, errors) in curves.items():
        errors = np.atleast_2d(np.asarray(errors, dtype=float))
        if floor is not None:
            errors = np.maximum(errors, floor)
        drawn |= _draw_curve(ax, np.asarray(ps, dtype=float) / (xscale[name] if xscale else 1.0), errors, label=name)
    if eps is not None:
        _eps_lines(ax, [eps])
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:
        _nothing_to_draw(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test error")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _log_ticks(ax) -> None:
    """Plain-number labels on log axes; at 1, 2 and 5 per decade where an axis spans less than 2 decades."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if lo <= 0 or hi <= lo:
            continue
        subs = (1.0, 2.0, 5.0) if math.log10(hi / lo) < 2 else (1.0,)
        axis.set_major_locator(LogLocator(base=10, subs=subs))
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(NullFormatter())


def _panels(plt, n: int):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(plt, fig, path: str) -> list[str]:
    """Write fig as PNG and PDF next to each other (path with or without an extension); returns both paths."""
    stem = os.path.splitext(path)[0] if path.endswith((".png", ".pdf")) else path
    paths = [stem + ".png", stem + ".pdf"]
    fig.tight_layout()
    fig.savefig(paths[0], dpi=130)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def _colors(settings: list[_Setting]) -> dict:
    """One colour per (v, n_classes, s, m, L), the same in every panel."""
    keys = sorted({(x.v, x.n_classes, x.s, x.n_c_m_L, x.m, x.L) for x in settings})
    return {k[:3] + k[4:]: f"C{i % 10}" for i, k in enumerate(keys)}


def _plot_errors(rows: Iterable[Mapping], path: str, eps: float | str, rescale: bool, title: str) -> list[str]:
    settings = _settings(rows)
    if not settings:
        raise ValueError("rhmfast: no runs to plot")
    plt = _pyplot()
    learners = list(dict.fromkeys(x.learner for x in settings))
    colors = _colors(settings)
    fig, axes = _panels(plt, len(learners))
    for ax, learner in zip(axes, learners):
        mine = [x for x in settings if x.learner == learner]
        varies = _varying(mine)
        drawn = False
        for x in mine:
            scale = x.n_c_m_L if rescale else 1.0
            drawn |= _draw_curve(ax, x.ps / scale, x.floored(), label=_label(x, varies),
                                 color=colors[x.v, x.n_classes, x.s, x.m, x.L])
        _eps_lines(ax, [threshold(x.n_classes, eps) for x in mine])
        if drawn:
            ax.set_xscale("log")
            ax.set_yscale("log")
            _log_ticks(ax)
        else:
            _nothing_to_draw(ax)
        ax.set_xlabel("P / (n_c m^L)" if rescale else "P")
        ax.set_ylabel("test error")
        ax.set_title(_learner_name(learner), fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    what = "P / (n_c m^L)" if rescale else "P"
    fig.suptitle(f"{title}: " * bool(title) + f"test error against {what}; mean over seeds, band min–max, "
                 "zero errors at 1/n_test", fontsize=10)
    return _save(plt, fig, path)


def plot_error_vs_p(rows: Iterable[Mapping], path: str, eps: float | str = 0.1, *, title: str = "") -> list[str]:
    """Test error against P, one panel per learner, a curve per setting: mean over seeds with a min–max band,
    log-log, zero errors floored at 1/n_test, dashed line at ε. title: put before the figure's own title
    (say the grammar). Writes path as .png and .pdf (path with or without the extension); returns both paths."""
    return _plot_errors(rows, path, eps, False, title)


def plot_collapse(rows: Iterable[Mapping], path: str, eps: float | str = 0.1, *, title: str = "") -> list[str]:
    """The collapse plot: test error against P/(n_c·m^L), all settings of a learner overlaid, one panel per
    learner (otherwise as plot_error_vs_p). Writes .png and .pdf; returns both paths."""
    return _plot_errors(rows, path, eps, True, title)


def _interval(fit: Mapping) -> str:
    return f"[{fit['low']:.2f}, {fit['high']:.2f}]" if math.isfinite(fit["low"]) else "(no interval)"


def plot_pstar_scaling(pstars: list[dict], fits: list[dict], path: str, *, title: str = "") -> list[str]:
    """P* against n_c·m^L per learner (pstars from pstar_table, fits from fit_scaling), log-log: bootstrap
    intervals as error bars (an interval open upwards is drawn to the top with a caret), the fitted power law
    with its slope and interval in the legend, and P* = n_c m^L for reference. Settings that do not reach P*
    are listed in the panel. Writes .png and .pdf; returns both paths."""
    if not pstars:
        raise ValueError("rhmfast: no P* to plot")
    plt = _pyplot()
    learners = list(dict.fromkeys(r["learner"] for r in pstars))
    fit_of = {f["learner"]: f for f in fits}
    fig, axes = _panels(plt, len(learners))
    for ax, learner in zip(axes, learners):
        mine = [r for r in pstars if r["learner"] == learner]
        done = [r for r in mine if r["reached"]]
        x_all = np.array([r["n_c_m_L"] for r in mine], dtype=float)
        ax.plot(x_all, x_all, color="gray", ls=":", lw=0.8, label="P* = n_c m^L")
        if done:
            x = np.array([r["n_c_m_L"] for r in done], dtype=float)
            p = np.array([r["pstar"] for r in done])
            lo = np.array([r["low"] for r in done])
            hi = np.array([r["high"] for r in done])
            top = max(np.max(np.where(np.isfinite(hi), hi, p)), np.max(p)) * 2.0
            open_top = ~np.isfinite(hi)
            hi = np.where(open_top, top, hi)
            ax.errorbar(x, p, yerr=[p - lo, hi - p], fmt="o", ms=4, capsize=3, color="C0",
                        label=f"P* ({mine[0]['level']:.0%} bootstrap interval)")
            if open_top.any():
                ax.plot(x[open_top], hi[open_top], "^", color="C0", ms=5)
        fit = fit_of.get(learner)
        if fit is not None and math.isfinite(fit["slope"]):
            grid = np.geomspace(x_all.min() / 1.3, x_all.max() * 1.3, 50)
            ax.plot(grid, fit["prefactor"] * grid ** fit["slope"], color="C3", lw=1.2,
                    label=f"fit: P* = {fit['prefactor']:.3g} (n_c m^L)^a, a = {fit['slope']:.2f} {_interval(fit)}")
        elif fit is not None:
            ax.plot([], [], " ", label=f"no fit: {fit['reason']}")
        missed = [r for r in mine if not r["reached"]]
        if missed:
            ax.text(0.02, 0.02, "not reached: " + "; ".join(f"m={r['m']}, L={r['L']}" for r in missed),
                    transform=ax.transAxes, fontsize=7, va="bottom")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _log_ticks(ax)
        ax.set_xlabel("n_c m^L")
        ax.set_ylabel("P*")
        ax.set_title(_learner_name(learner), fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="best")  # never over a panel's only point
    eps = ", ".join(f"{e:.3g}" for e in sorted({r["eps"] for r in pstars}))
    fig.suptitle(f"{title}: " * bool(title) + f"sample complexity P*(ε = {eps}) against n_c m^L", fontsize=10)
    return _save(plt, fig, path)


# ---------------------------------------------------------------------------------------------------------------
# Tables and the report

_PSTAR_COLUMNS = ("learner", "v", "n_classes", "s", "m", "L", "n_c_m_L", "n_seeds", "eps", "level", "pstar", "low",
                  "high", "reached", "upper_bound", "ratio", "grid")
_CURVE_COLUMNS = ("learner", "v", "n_classes", "s", "m", "L", "n_c_m_L", "P", "n_runs", "mean_error", "min_error",
                  "max_error")
_FIT_COLUMNS = ("learner", "slope", "low", "high", "level", "intercept", "prefactor", "n_settings", "n_reached",
                "n_boot", "n_boot_used", "reason")


def _write_csv(path: str, columns: tuple, records: Iterable[dict]) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    return path


def _p(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.0f}"


def _markdown(pstars: list[dict], fits: list[dict]) -> str:
    level = pstars[0]["level"] if pstars else 0.9
    eps = ", ".join(f"{e:.4g} (n_c = {n})" for n, e in sorted({(r["n_classes"], r["eps"]) for r in pstars}))
    lines = ["# Sample complexity P*(ε)", "",
             "P*: the smallest P at which the test error averaged over seeds falls below ε, interpolated in log P "
             f"between grid points; interval: {level:.0%} bootstrap over seeds; inf: not reached within the grid; "
             "≤: already below ε at the smallest P run.", "", f"ε = {eps}", "",
             "| learner | v | m | L | n_c m^L | seeds | P* | interval | P* / (n_c m^L) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in pstars:
        mark = "≤ " if r["upper_bound"] else ""
        lines.append(f"| {_learner_name(r['learner'])} | {r['v']} | {r['m']} | {r['L']} | {r['n_c_m_L']} | "
                     f"{r['n_seeds']} | {mark}{_p(r['pstar'])} | [{_p(r['low'])}, {_p(r['high'])}] | "
                     f"{mark}{r['ratio']:.3g} |")
    if fits:
        lines += ["", "## Scaling: P* = c (n_c m^L)^a", "",
                  "Least squares in log-log over the settings that reach P*; interval of a: bootstrap over seeds "
                  "within every setting (resamples where fewer than 2 settings reach P* are dropped).", "",
                  "| learner | settings reaching P* | a | interval | c | resamples used |", "|---|---|---|---|---|---|"]
        for f in fits:
            head = f"| {_learner_name(f['learner'])} | {f['n_reached']} of {f['n_settings']} |"
            if math.isfinite(f["slope"]):
                lines.append(f"{head} {f['slope']:.3f} | {_interval(f)} | {f['prefactor']:.3g} | "
                             f"{f['n_boot_used']} of {f['n_boot']} |")
            else:
                lines.append(f"{head} not fitted: {f['reason']} | | | |")
    return "\n".join(lines) + "\n"


def write_tables(pstars: list[dict], fits: list[dict], out_dir: str) -> dict[str, str]:
    """Write pstar.csv (one row per setting; grid as space-separated P), pstar.md (the P* table, then the
    fitted slope per learner), curves.csv (mean, min and max test error per setting and P) and scaling.csv
    (one row per fit) into out_dir. pstars from pstar_table, fits from fit_scaling. Returns {file name: path}."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    paths["pstar.csv"] = _write_csv(os.path.join(out_dir, "pstar.csv"), _PSTAR_COLUMNS,
                                    ({**r, "grid": " ".join(str(p) for p in r["grid"])} for r in pstars))
    curve_rows = ({**r, "P": p, "n_runs": n, "mean_error": mean, "min_error": low, "max_error": high}
                  for r in pstars
                  for p, n, mean, low, high in zip(r["grid"], r["n_runs"], r["mean_error"], r["min_error"],
                                                   r["max_error"]))
    paths["curves.csv"] = _write_csv(os.path.join(out_dir, "curves.csv"), _CURVE_COLUMNS, curve_rows)
    paths["scaling.csv"] = _write_csv(os.path.join(out_dir, "scaling.csv"), _FIT_COLUMNS, fits)
    paths["pstar.md"] = os.path.join(out_dir, "pstar.md")
    with open(paths["pstar.md"], "w") as f:
        f.write(_markdown(pstars, fits))
    return paths


def write_report(rows: Iterable[Mapping], out_dir: str, eps: float | str = 0.1, *, n_boot: int = 1000,
                 level: float = 0.9, seed: int = 0, title: str = "") -> dict[str, str]:
    """The analysis of a sweep: pstar_table, fit_scaling per learner, write_tables, and the plots
    test_error_vs_P, test_error_vs_P_scaled (the collapse) and pstar_vs_nc_mL, each .png and .pdf, in out_dir.
    eps: a float in (0, 1) or "rand/10". Returns {file name: path} of everything written. Raises ValueError
    on malformed rows or when there are none."""
    rows = list(rows)
    if not rows:
        raise ValueError("rhmfast: no runs to analyse")
    threshold(2, eps)  # a bad eps fails before any work
    os.makedirs(out_dir, exist_ok=True)
    pstars = pstar_table(rows, eps, n_boot=n_boot, level=level, seed=seed)
    fits = [fit_scaling(rows, eps, learner=learner, n_boot=n_boot, level=level, seed=seed)
            for learner in dict.fromkeys(r["learner"] for r in pstars)]
    paths = write_tables(pstars, fits, out_dir)
    written = (plot_error_vs_p(rows, os.path.join(out_dir, "test_error_vs_P"), eps, title=title)
               + plot_collapse(rows, os.path.join(out_dir, "test_error_vs_P_scaled"), eps, title=title)
               + plot_pstar_scaling(pstars, fits, os.path.join(out_dir, "pstar_vs_nc_mL"), title=title))
    paths.update({os.path.basename(p): p for p in written})
    return paths
