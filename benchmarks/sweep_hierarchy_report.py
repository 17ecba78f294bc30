"""The report of the label-hierarchy study (benchmarks/sweeps/hierarchy.toml), from its result store:

    python benchmarks/sweep_hierarchy_report.py out/sweep_hierarchy benchmarks/results/sweep_hierarchy

writes results.parquet (every run), pstar.md and pstar.csv (P* at top-label error 0.1 with a bootstrap
interval over seeds, per learner, hierarchy and depth L; the fit of log2 P* against L per learner and
hierarchy), test_error_vs_P.png/.pdf (one panel per hierarchy family, a curve per learner and depth),
pstar_vs_L.png/.pdf and meta.json (the machine and the runs' wall time).

A family is (gate, wiring, fan_in, d, level_size) with the depth L left out; a learner is the config's
learner name, with the activation (and a ridge penalty other than the default) for the layerwise learner. The quadratic features of the layerwise
learner span the polynomials of degree <= 2 of the stream its top block reads, of dimension
D = d + labels below the top level: the table lists M = (D + 1)(D + 2) / 2 (their number) and P* per stage
divided by M.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine, study_report_start  # noqa: E402
from rhmfast.studies.pstar import estimate_pstar  # noqa: E402
from rhmfast.studies.runs import DEFAULTS, hierarchy_of  # noqa: E402

EPS = 0.1
N_BOOT = 1000


def family_of(c: dict) -> str:
    tail = "" if c["wiring"] == "tree" else f", d = {c['d']}, {c['level_size']} labels per level"
    return f"{c['gate']} {c['wiring']}, fan-in {c['fan_in']}{tail}"


def learner_of(c: dict, learner: str) -> str:
    if learner != "residual":
        return learner
    ridge = "" if c["ridge"] == DEFAULTS["ridge"] else f", ridge {c['ridge']:g}"
    return f"{learner} ({c['activation']}{ridge})"


def top_stream(c: dict) -> int:
    """D: the entries of the stream the top block reads (inputs and every label below the top level)."""
    h = hierarchy_of(c)
    return h.d + h.n_labels - len(h.levels[-1])


def settings(records: list[dict]) -> dict:
    """{(family, learner, L): {"config": one config, "runs": {(seed, P): error}}}."""
    out = {}
    for r in records:
        c = r["config"]
        key = (family_of(c), learner_of(c, r["learner"]), c["L"])
        entry = out.setdefault(key, dict(config=c, runs={}))
        error = math.nan if r["test_error"] is None else r["test_error"]
        entry["runs"][(c["seed_sample"], r["P_used"])] = error
    return out


def pstar_rows(groups: dict) -> list[dict]:
    rows = []
    for (family, learner, depth), entry in sorted(groups.items()):
        seeds = sorted({s for s, _ in entry["runs"]})
        ps = sorted({p for _, p in entry["runs"]})
        errors = np.array([[entry["runs"].get((s, p), math.nan) for p in ps] for s in seeds])
        estimate = estimate_pstar(np.array(ps, dtype=float), errors, EPS, n_boot=N_BOOT)
        c = entry["config"]
        mean = np.nanmean(errors, 0)
        # already below eps at the smallest P run: P* is only bounded above, left out of the fits
        row = dict(family=family, learner=learner, L=depth, d=hierarchy_of(c).d, n_seeds=len(seeds),
                   P_min=ps[0], P_max=ps[-1], **estimate, bound=bool(mean[0] < EPS), ps=ps, mean_errors=mean.tolist())
        if learner.startswith("residual (") and estimate["reached"] and not row["bound"]:
            dim = top_stream(c)
            row.update(D=dim, M=(dim + 1) * (dim + 2) // 2, per_stage_over_M=estimate["pstar"] / depth / ((dim + 1) * (dim + 2) / 2))
        rows.append(row)
    return rows


def depth_fits(rows: list[dict]) -> list[dict]:
    """Least squares of log2 P* against L per (family, learner), over the depths where P* is reached (and
    not only bounded above)."""
    fits = []
    for family, learner in sorted({(r["family"], r["learner"]) for r in rows}):
        points = [(r["L"], math.log2(r["pstar"])) for r in rows
                  if r["family"] == family and r["learner"] == learner and r["reached"] and not r["bound"]]
        if len({x for x, _ in points}) < 2:
            continue
        x, y = np.array(points).T
        slope, intercept = np.polyfit(x, y, 1)
        fits.append(dict(family=family, learner=learner, depths=[int(v) for v in x], slope=float(slope),
                         factor_per_level=float(2**slope), intercept=float(intercept)))
    return fits


def _fmt(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.0f}"


def pstar_md(rows: list[dict], fits: list[dict], footer: str) -> str:
    lines = [f"# Label hierarchies: P* at top-label error {EPS}", "",
             "P counts every training sample (the layerwise learner: all stages). P* interpolated in log P where "
             "the seed-averaged error first falls below ε; interval: 90% bootstrap over seeds (inf: some "
             "resampled curves never fall below ε). \"≤ P_min\": already below ε at the smallest P run (left out "
             "of the fits); \"not reached\": the error stayed above ε up to P_max. D: the entries of the stream "
             "the top block reads; M = (D + 1)(D + 2)/2, the polynomials of degree ≤ 2 in them.", "",
             "| hierarchy | learner | L | d | seeds | P range | P* | interval | D | M | P*/(L M) |",
             "|---|---|---:|---:|---:|---|---:|---|---:|---:|---:|"]
    for r in rows:
        pstar = (f"≤ {r['P_min']}" if r["bound"] else _fmt(r["pstar"])) if r["reached"] else "not reached"
        interval = f"[{_fmt(r['low'])}, {_fmt(r['high'])}]" if r["reached"] and not r["bound"] else ""
        extra = (f"{r['D']} | {r['M']} | {r['per_stage_over_M']:.2f}" if "D" in r else " | | ")
        lines.append(f"| {r['family']} | {r['learner']} | {r['L']} | {r['d']} | {r['n_seeds']} | "
                     f"{r['P_min']}–{r['P_max']} | {pstar} | {interval} | {extra} |")
    lines += ["", "## log2 P* against depth", "", "| hierarchy | learner | depths | slope | P* factor per level |",
              "|---|---|---|---:|---:|"]
    for f in fits:
        lines.append(f"| {f['family']} | {f['learner']} | {', '.join(map(str, f['depths']))} | {f['slope']:.2f} | "
                     f"{f['factor_per_level']:.2f} |")
    lines += ["", "## Lowest mean top-label error reached (learners that never reach ε)", "",
              "| hierarchy | learner | L | P_max | mean error at each P |", "|---|---|---:|---:|---|"]
    for r in rows:
        if not r["reached"]:
            errors = ", ".join(f"{p}: {e:.3f}" for p, e in zip(r["ps"], r["mean_errors"]))
            lines.append(f"| {r['family']} | {r['learner']} | {r['L']} | {r['P_max']} | {errors} |")
    return "\n".join(lines) + "\n" + footer


def plot(groups: dict, rows: list[dict], out: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted({k[0] for k in groups})
    fig, axes = plt.subplots(1, len(families), figsize=(4.6 * len(families), 3.8), squeeze=False)
    learners = sorted({k[1] for k in groups})
    colors = {name: plt.cm.tab10(i) for i, name in enumerate(learners)}
    markers = "os^Dv<>p"
    for ax, family in zip(axes[0], families):
        for (fam, learner, depth), entry in sorted(groups.items()):
            if fam != family:
                continue
            ps = sorted({p for _, p in entry["runs"]})
            mean = [np.nanmean([e for (s, q), e in entry["runs"].items() if q == p]) for p in ps]
            ax.plot(ps, mean, marker=markers[depth % len(markers)], color=colors[learner], ms=4, lw=1,
                    label=f"{learner}, L={depth}")
        ax.axhline(EPS, color="grey", ls=":", lw=1)
        ax.set(xscale="log", xlabel="P (all training samples)", ylabel="top-label test error", title=family, ylim=(-0.02, 0.6))
        ax.title.set_fontsize(8)
        ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(os.path.join(out, f"test_error_vs_P.{ext}"), dpi=130)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (family, learner) in enumerate(sorted({(r["family"], r["learner"]) for r in rows})):
        mine = [r for r in rows if r["family"] == family and r["learner"] == learner and r["reached"] and not r["bound"]]
        if not mine:
            continue
        x = [r["L"] for r in mine]
        y = [r["pstar"] for r in mine]
        low = [r["pstar"] - r["low"] if math.isfinite(r["low"]) else 0 for r in mine]
        high = [r["high"] - r["pstar"] if math.isfinite(r["high"]) else 0 for r in mine]
        ax.errorbar(x, y, yerr=[low, high], marker=markers[i % len(markers)], ms=4, capsize=2, lw=1,
                    color=plt.cm.tab20(i % 20), label=f"{learner}: {family}")
    ax.set(yscale="log", xlabel="depth L", ylabel=f"P* (top-label error {EPS})")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(os.path.join(out, f"pstar_vs_L.{ext}"), dpi=130, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> None:
    args, records = study_report_start(__doc__, argv)
    records = [r for r in records if r["config"].get("data") == "hierarchy"]
    groups = settings(records)
    rows = pstar_rows(groups)
    fits = depth_fits(rows)
    wall = sum(r["result"]["wall_time_s"] for r in records)
    meta = dict(machine(), runs=len(records), run_wall_time_s=round(wall, 1), config="benchmarks/sweeps/hierarchy.toml",
                eps=EPS, fits=fits)
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    footer = (f"\n{len(records)} runs, {wall / 3600:.2f} h of run time in all; {meta['cpu']}, {meta['cores']} "
              f"cores, torch {meta['torch']}, {meta['date']}.\n")
    with open(os.path.join(args.out, "pstar.md"), "w") as f:
        f.write(pstar_md(rows, fits, footer))
    columns = ("family", "learner", "L", "d", "n_seeds", "P_min", "P_max", "pstar", "low", "high", "bound", "D", "M",
               "per_stage_over_M")
    with open(os.path.join(args.out, "pstar.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot(groups, rows, args.out)
    print(open(os.path.join(args.out, "pstar.md")).read())


if __name__ == "__main__":
    main()
