"""The report of a sweep: the P* tables (CSV and markdown) and the figures, from the rows of its runs.

    write_tables(pstars, fits, out_dir)    pstar.csv, pstar.md, curves.csv, scaling.csv
    write_report(rows, out_dir, eps)       the tables and every figure; returns {file name: path}
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping

from rhmfast.studies.curves import interval_text, learner_label, threshold
from rhmfast.studies.plots import plot_collapse, plot_error_vs_p, plot_pstar_scaling
from rhmfast.studies.pstar import fit_scaling, pstar_table


_PSTAR_COLUMNS = ("learner", "v", "n_classes", "s", "m", "L", "n_c_m_L", "n_seeds", "floor", "eps", "level", "pstar",
                  "low", "high", "reached", "upper_bound", "ratio", "grid")
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
    floors = any(r["floor"] > 0 for r in pstars)
    eps = ", ".join(f"{e:.4g} (n_c = {n})" for n, e in sorted({(r["n_classes"], r["eps"]) for r in pstars}))
    lines = ["# Sample complexity P*(ε)", "",
             "P*: the smallest P at which the test error averaged over seeds falls below ε, interpolated in log P "
             f"between grid points; interval: {level:.0%} bootstrap over seeds; inf: not reached within the grid; "
             "≤: already below ε at the smallest P run.", "", f"ε = {eps}", ""]
    if floors:
        lines += ["Floor: the Bayes-optimal test error, which no learner goes below; where there is one, the "
                  "threshold is the floor plus ε of the room above it (the ε listed above is that threshold).", ""]
    lines += ["| learner | v | m | L | n_c m^L | seeds |" + " floor |" * floors + " P* | interval | P* / (n_c m^L) |",
              "|---|---|---|---|---|---|" + "---|" * floors + "---|---|---|"]
    for r in pstars:
        mark = "≤ " if r["upper_bound"] else ""
        lines.append(f"| {learner_label(r['learner'])} | {r['v']} | {r['m']} | {r['L']} | {r['n_c_m_L']} | "
                     f"{r['n_seeds']} |" + f" {r['floor']:.4g} |" * floors + f" {mark}{_p(r['pstar'])} | "
                     f"[{_p(r['low'])}, {_p(r['high'])}] | {mark}{r['ratio']:.3g} |")
    if fits:
        lines += ["", "## Scaling: P* = c (n_c m^L)^a", "",
                  "Least squares in log-log over the settings that reach P*; interval of a: bootstrap over seeds "
                  "within every setting (resamples where fewer than 2 settings reach P* are dropped).", "",
                  "| learner | settings reaching P* | a | interval | c | resamples used |", "|---|---|---|---|---|---|"]
        for f in fits:
            head = f"| {learner_label(f['learner'])} | {f['n_reached']} of {f['n_settings']} |"
            if math.isfinite(f["slope"]):
                lines.append(f"{head} {f['slope']:.3f} | {interval_text(f)} | {f['prefactor']:.3g} | "
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
