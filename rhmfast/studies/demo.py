"""The main job, ``rhmfast demo`` (what ``make demo`` runs): a small sample-complexity experiment.

For each (m, L) setting of a grammar with v = n_c, the hCNN trained end to end with SGD and the Ren
layerwise learner (and, on the first setting only, a fully-connected baseline), over grids of
training-set sizes in units of n_c m^L and several seeds. The runs are a grid of run configs
(``rhmfast.studies.grid.expand``) run by a sweep (``rhmfast.studies.sweep.run_sweep``) into the result store
``<out>/runs``: a re-run resumes (stored runs are read back, corrupt records redone), and a changed flag
gives runs of other config hashes beside the stored ones. The report of this grid's runs
(``rhmfast.studies.report.write_report``: P* tables as Markdown and CSV, the curves, the scaling fit, plots as
PNG and PDF) is written to ``<out>``.
"""
from __future__ import annotations

import os
import time

from rhmfast.studies.grid import expand, parse_values

LEARNERS = ("hcnn", "ren", "fc")  # the order of the report
# The reference SGD recipe (the hCNN is mean field: its learning rate is lr x width) and the Ren learner's
# features, pinned here so that the demo's runs do not move with the defaults of rhmfast.studies.runs.
SGD = dict(lr=0.1, momentum=0.9, batch_size=128, loss_threshold=1e-3)
REN = dict(ren_feature_kind="tensor+rff")


def demo_configs(args) -> list[dict]:
    """The demo's runs, as complete run configs, from its flags (settings, grids and seeds as text:
    'm,L m,L', 'a,b,c' or 'lo:hi:n'); ValueError names a bad flag or a training set larger than the
    grammar allows."""
    settings = parse_values("settings", args.settings)
    common = dict(v=args.v, s=args.s, rules="pcsl", seed_rules=args.seed_rules, n_test=args.n_test,
                  seeds=args.seeds, settings=settings)
    sgd = dict(SGD, max_steps=args.max_steps, P_scaled=args.grid)
    return expand(common, [
        dict(model="hcnn", norm="mf", width=args.width, **sgd),
        # P of the Ren learner: the total of its stages' fresh samples, N^(l) proportional to m^l
        dict(model="ren", P_scaled=args.ren_grid, ren_features=args.ren_features, ren_sigma=args.ren_sigma, **REN),
        dict(model="fc", depth=1, width=args.fc_width, settings=settings[:1], **sgd),
    ])


def run_demo(args) -> dict[str, str]:
    """Run the demo's grid (stored runs are skipped), write the report of its runs into args.out, print
    the P* table and where everything is; returns {file name: path} of the report. Ctrl-C, or runs that
    failed, still leave the report of the finished runs, then end the command with an error."""
    from rhmfast.studies.curves import threshold
    from rhmfast.studies.report import write_report
    from rhmfast.studies.runs import config_hash
    from rhmfast.studies.store import load_rows
    from rhmfast.studies.sweep import describe, run_sweep

    try:
        configs = demo_configs(args)
        eps = threshold(args.v, args.eps)
    except ValueError as error:
        raise SystemExit(f"rhmfast demo: {str(error).removeprefix('rhmfast: ')}") from None
    store = os.path.join(args.out, "runs")
    print(describe(configs))
    started = time.perf_counter()
    outcome, stopped = None, None
    try:
        outcome = run_sweep(configs, store, workers=args.workers, threads=args.threads)
    except KeyboardInterrupt:
        stopped = "interrupted"
    seconds = time.perf_counter() - started
    if outcome and outcome["failures"]:
        stopped = f"{len(outcome['failures'])} runs failed"
    try:
        rows = load_rows(store, hashes=[config_hash(c) for c in configs])
    except ValueError:
        raise SystemExit(f"rhmfast demo: {stopped}; no finished runs to report") from None
    rows.sort(key=lambda row: LEARNERS.index(row["learner"]))
    title = f"RHM v = n_c = {args.v}, s = {args.s}, rules seed {args.seed_rules}"
    paths = write_report(rows, args.out, eps, title=title)
    with open(paths["pstar.md"]) as f:
        print(f.read())
    done = f"{outcome['ran']} run now, {outcome['stored_before']} stored before" if outcome else "interrupted"
    print(f"{len(rows)} of {len(configs)} runs finished ({done}) in {seconds:.0f} s; eps = {eps:g}\n"
          f"run records: {store}/ (one JSON file per run, named by the hash of its config)\n"
          f"report: {', '.join(os.path.basename(p) for p in sorted(paths.values()))} in {args.out}/")
    if stopped:
        raise SystemExit(f"rhmfast demo: {stopped}; the report covers the {len(rows)} finished runs")
    return paths
