"""The report of the Ren study (benchmarks/sweeps/ren.toml), from its result store:

    python benchmarks/sweep_ren_report.py out/sweep_ren benchmarks/results/sweep_ren

writes results.parquet (every run), one P* report per group of grammars (first-token-uniform/, pcsl/:
grammars that satisfy Assumption 6; controls/: pcsl grammars that violate it), grammars.md (Assumption 6 of
every grammar, level by level), stages.md (the Ren learners' per-stage diagnostics at the largest P) and
goal.md (which satisfying settings the kernel, tensor+kernel or cluster learner brings below ε = 0.1 within
256 n_c m^L samples), each with the machine and the runs' wall time.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine, study_report_start  # noqa: E402
import rhmfast  # noqa: E402
from rhmfast.studies.pstar import pstar_table  # noqa: E402
from rhmfast.studies.report import write_report  # noqa: E402
from rhmfast.studies.store import load_rows  # noqa: E402

GROUPS = {
    "first-token-uniform": lambda c: c["rules"] == "first-token-uniform",
    "pcsl": lambda c: c["rules"] == "pcsl" and c["require"] == "assumption6",
    "controls": lambda c: c["rules"] == "pcsl" and c["require"] is None,
}
EPS = 0.1
GOAL = 256  # total samples, in units of n_c m^L


def grammar_key(c: dict) -> tuple:
    return c["rules"], c["v"], c["s"], c["m"], c["L"], c["seed_rules"]


def grammars_md(configs: list[dict]) -> str:
    lines = ["# Assumption 6 of the study's grammars", "",
             "Per level l: K_rho = rho·m^(l/2) (rho: the smallest distance between the label posteriors of two "
             "non-synonyms that can stand first), collisions (such pairs with equal posteriors), never_first "
             "(patches that never stand first), kappa. From `grammar.exact.assumption_check()`.", "",
             "| rules | m | L | rules seed | K_rho by level (1 .. L) | collisions | never first | kappa (max) | summary |",
             "|---|---|---|---|---|---|---|---|---|"]
    for rules, v, s, m, L, seed in sorted({grammar_key(c) for c in configs}):
        g = rhmfast.RHM(v, m, s, L, seed=seed, rules=rules)
        levels = g.exact.assumption_check()
        k_rho = ", ".join(f"{r['K_rho']:.3g}" for r in levels)
        lines.append(f"| {rules} | {m} | {L} | {seed} | {k_rho} | {sum(r['collisions'] for r in levels)} | "
                     f"{sum(r['never_first'] for r in levels)} | {max(r['kappa'] for r in levels):.3g} | "
                     f"{g.exact.assumption_summary()} |")
    return "\n".join(lines) + "\n"


def _mean(values) -> float:
    values = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.fmean(values) if values else math.nan


def stages_md(records: list[dict]) -> str:
    """Per Ren learner and grammar, at its largest P: each stage's diagnostics, averaged over seeds."""
    lines = ["# The Ren learners stage by stage, at the largest P of each setting", "",
             "Means over seeds. dist: ‖h − q^(l)‖ on the first patch; purity: outputs nearest their own parent's "
             "posterior; clusters: found / expected (n_posteriors); ρ̃, ε̃_S: the smallest distance between two "
             "clusters and the largest within one, of the stage's input embeddings; σ: the measured bandwidth.", "",
             "| group | learner | rules | m | L | P / n_c m^L | test error | level | dist | purity | clusters | ρ̃ | ε̃_S | σ | kernel rows |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ren = [r for r in records if r["config"]["model"] == "ren"]
    settings = sorted({(group_of(r["config"]), r["learner"], grammar_key(r["config"])) for r in ren})
    for group, learner, key in settings:
        mine = [r for r in ren if r["learner"] == learner and grammar_key(r["config"]) == key]
        top = max(r["config"]["P"] for r in mine)
        mine = [r for r in mine if r["config"]["P"] == top]
        rules, v, _, m, L, _ = key
        error = _mean([r["test_error"] for r in mine])
        for level in range(L, 0, -1):
            st = [next(s for s in r["result"]["stages"] if s["level"] == level) for r in mine
                  if any(s["level"] == level for s in r["result"]["stages"])]
            found = f"{_mean([s['n_clusters'] for s in st]):.3g} / {st[0]['n_posteriors']}" if st else ""
            lines.append(
                f"| {group} | {learner} | {rules} | {m} | {L} | {top / (v * m ** L):.0f} | {error:.3f} | {level} | "
                f"{_mean([s['posterior_distance'] for s in st]):.3f} | {_mean([s['purity'] for s in st]):.3f} | "
                f"{found} | {_mean([s['rho_tilde'] for s in st]):.3g} | {_mean([s['eps_S'] for s in st]):.3g} | "
                f"{_mean([s.get('sigma') for s in st]):.3g} | "
                f"{', '.join(sorted({str(s.get('kernel_points', '')) + (' nyström' if s.get('kernel_solver') == 'nystrom' else '') for s in st}))} |")
    return "\n".join(lines) + "\n"


def group_of(config: dict) -> str:
    return next(name for name, belongs in GROUPS.items() if belongs(config))


def goal_md(pstars: dict[str, list[dict]]) -> str:
    lines = [f"# Goal: the Ren learner with kernel (kernel, tensor+kernel) or cluster features below ε = {EPS} "
             f"within {GOAL} n_c m^L samples",
             "", "On every grammar that satisfies Assumption 6 (groups first-token-uniform and pcsl). P*: "
             "seed-averaged test error crossing ε, interpolated in log P; inf: not reached within the grid.", "",
             "| group | learner | m | L | P* / n_c m^L | met |", "|---|---|---|---|---|---|"]
    for group in ("first-token-uniform", "pcsl"):
        for r in pstars.get(group, []):
            if r["learner"] in ("ren-kernel", "ren-tensor+kernel", "ren-cluster"):
                ratio = r["pstar"] / r["n_c_m_L"]
                lines.append(f"| {group} | {r['learner']} | {r['m']} | {r['L']} | "
                             f"{'inf' if math.isinf(ratio) else f'{ratio:.3g}'} | {'yes' if ratio <= GOAL else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args, records = study_report_start(__doc__, argv)
    pstars = {}
    for group, belongs in GROUPS.items():
        hashes = [r["hash"] for r in records if belongs(r["config"])]
        if hashes:
            rows = load_rows(args.store, hashes)
            write_report(rows, os.path.join(args.out, group), eps=EPS, title=f"v = n_c = 8, {group}")
            pstars[group] = pstar_table(rows, EPS)
    wall = sum(r["result"]["wall_time_s"] for r in records)
    meta = dict(machine(), runs=len(records), run_wall_time_s=round(wall, 1), config="benchmarks/sweeps/ren.toml")
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    footer = (f"\n{len(records)} runs, {wall / 3600:.2f} h of run time in all; {meta['cpu']}, {meta['cores']} "
              f"cores, torch {meta['torch']}, {meta['date']}.\n")
    for name, text in (("grammars.md", grammars_md([r["config"] for r in records])),
                       ("stages.md", stages_md(records)), ("goal.md", goal_md(pstars))):
        with open(os.path.join(args.out, name), "w") as f:
            f.write(text + footer)
    print(open(os.path.join(args.out, "goal.md")).read())


if __name__ == "__main__":
    main()
