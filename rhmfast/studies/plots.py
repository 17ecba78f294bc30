"""Figures of a sweep: error curves against P and against P/(n_c·m^L) (the collapse), and P* against
n_c·m^L with the fitted power law. Each is written as PNG and PDF.

    plot_curves(curves, path)                       any {name: (ps, errors)} on log-log axes
    plot_error_vs_p(rows, path), plot_collapse(rows, path)   one panel per learner, a curve per setting
    plot_pstar_scaling(pstars, fits, path)          from ``pstar.pstar_table`` and ``pstar.fit_scaling``
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping

import numpy as np

from rhmfast.studies.curves import Setting, interval_text, learner_label, settings_of, threshold


def _label(setting: Setting, varies: set[str]) -> str:
    """"m=2, L=4", with v, n_c and s added where they vary among the settings shown together."""
    parts = [f"{k}={getattr(setting, k)}" for k in ("v", "n_classes", "s") if k in varies]
    return ", ".join([f"m={setting.m}", f"L={setting.L}", *parts]).replace("n_classes=", "n_c=")


def _varying(settings: list[Setting]) -> set[str]:
    return {k for k in ("v", "n_classes", "s") if len({getattr(x, k) for x in settings}) > 1}


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


def _colors(settings: list[Setting]) -> dict:
    """One colour per (v, n_classes, s, m, L), the same in every panel."""
    keys = sorted({(x.v, x.n_classes, x.s, x.n_c_m_L, x.m, x.L) for x in settings})
    return {k[:3] + k[4:]: f"C{i % 10}" for i, k in enumerate(keys)}


def _plot_errors(rows: Iterable[Mapping], path: str, eps: float | str, rescale: bool, title: str) -> list[str]:
    settings = settings_of(rows)
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
        _eps_lines(ax, [threshold(x.n_classes, eps, x.floor) for x in mine])
        for x in mine:
            if x.floor > 0:  # the Bayes-optimal error, in the setting's colour
                ax.axhline(x.floor, color=colors[x.v, x.n_classes, x.s, x.m, x.L], ls="--", lw=1.0,
                           label=f"Bayes floor {x.floor:.3g} ({_label(x, varies)})")
        if drawn:
            ax.set_xscale("log")
            ax.set_yscale("log")
            _log_ticks(ax)
        else:
            _nothing_to_draw(ax)
        ax.set_xlabel("P / (n_c m^L)" if rescale else "P")
        ax.set_ylabel("test error")
        ax.set_title(learner_label(learner), fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    what = "P / (n_c m^L)" if rescale else "P"
    fig.suptitle(f"{title}: " * bool(title) + f"test error against {what}; mean over seeds, band min–max, "
                 "zero errors at 1/n_test", fontsize=10)
    return _save(plt, fig, path)


def plot_error_vs_p(rows: Iterable[Mapping], path: str, eps: float | str = 0.1, *, title: str = "") -> list[str]:
    """Test error against P, one panel per learner, a curve per setting: mean over seeds with a min–max band,
    log-log, zero errors floored at 1/n_test, dashed lines at ε (gray) and at a setting's non-zero floor, its
    Bayes-optimal error (its colour). title: put before the figure's own title
    (say the grammar). Writes path as .png and .pdf (path with or without the extension); returns both paths."""
    return _plot_errors(rows, path, eps, False, title)


def plot_collapse(rows: Iterable[Mapping], path: str, eps: float | str = 0.1, *, title: str = "") -> list[str]:
    """The collapse plot: test error against P/(n_c·m^L), all settings of a learner overlaid, one panel per
    learner (otherwise as plot_error_vs_p). Writes .png and .pdf; returns both paths."""
    return _plot_errors(rows, path, eps, True, title)


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
                    label=f"fit: P* = {fit['prefactor']:.3g} (n_c m^L)^a, a = {fit['slope']:.2f} {interval_text(fit)}")
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
        ax.set_title(learner_label(learner), fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="best")  # never over a panel's only point
    eps = ", ".join(f"{e:.3g}" for e in sorted({r["eps"] for r in pstars}))
    fig.suptitle(f"{title}: " * bool(title) + f"sample complexity P*(ε = {eps}) against n_c m^L", fontsize=10)
    return _save(plt, fig, path)
