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


def check_demo(args) -> tuple[list[dict], float]:
    """The demo's runs (demo_configs) and its test-error threshold, once its flags and --out (a folder it
    may create or write) are checked; ValueError names a bad one. Creates nothing."""
    from rhmfast._files import check_writable_dir
    from rhmfast.studies.curves import threshold

    configs = demo_configs(args)
    eps = threshold(args.v, args.eps)
    check_writable_dir(args.out, "--out")
    return configs, eps


def run_demo(args, checked: tuple[list[dict], float] | None = None) -> dict[str, str]:
    """Run the demo's grid (stored runs are skipped), write the report of its runs into args.out, print
    the P* table and where everything is; returns {file name: path} of the report. checked: what
    check_demo(args) returned (checked here otherwise; bad flags or --out: ValueError, before anything is
    created). The exceptions of run_sweep end it as they end a sweep: StoreLockedError (another sweep or
    demo holds OUT/runs) before any run, StoreWriteError (a record not written: a full disk) with no
    report; Ctrl-C first writes the report of the finished runs, then raises its SweepInterrupted. Runs
    that failed leave the report of the others, then a SystemExit."""
    from rhmfast.studies.report import write_report
    from rhmfast.studies.runs import config_hash
    from rhmfast.studies.store import load_rows
    from rhmfast.studies.sweep import SweepInterrupted, describe, run_sweep

    configs, eps = checked or check_demo(args)
    store = os.path.join(args.out, "runs")
    print(describe(configs))
    started = time.perf_counter()
    interrupted = None
    try:
        outcome = run_sweep(configs, store, workers=args.workers, threads=args.threads, pack=getattr(args, "pack", None))
    except SweepInterrupted as interrupt:  # the engine has stopped; every finished run is stored
        outcome, interrupted = interrupt.outcome, interrupt
    seconds = time.perf_counter() - started
    stopped = f"{len(outcome['failures'])} runs failed" if outcome["failures"] else None
    try:
        rows = load_rows(store, hashes=[config_hash(c) for c in configs])
    except ValueError:
        if interrupted:
            raise interrupted from None
        raise SystemExit(f"rhmfast demo: {stopped}; no finished runs to report") from None
    rows.sort(key=lambda row: LEARNERS.index(row["learner"]))
    title = f"RHM v = n_c = {args.v}, s = {args.s}, rules seed {args.seed_rules}"
    paths = write_report(rows, args.out, eps, title=title)
    with open(paths["pstar.md"]) as f:
        print(f.read())
    print(f"{len(rows)} of {len(configs)} runs finished ({outcome['ran']} run now, {outcome['stored_before']} "
          f"stored before{', then interrupted' if interrupted else ''}) in {seconds:.0f} s; eps = {eps:g}\n"
          f"run records: {store}/ (one JSON file per run, named by the hash of its config)\n"
          f"report: {', '.join(os.path.basename(p) for p in sorted(paths.values()))} in {args.out}/")
    if interrupted:
        raise interrupted
    if stopped:
        raise SystemExit(f"rhmfast demo: {stopped}; the report covers the {len(rows)} finished runs")
    return paths
