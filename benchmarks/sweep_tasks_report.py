"""The report of the tasks-and-variants study (benchmarks/sweeps/tasks.toml), from its result store:

    python benchmarks/sweep_tasks_report.py out/sweep_tasks benchmarks/results/sweep_tasks

``load_rows`` names each learner by every key that varies in the store (task, context, production,
zipf_exponent, replacement, sparsity); here those labels are shortened to what tells the runs apart: the
task and the grammar's variant. The files are those of ``rhmfast plot`` (P* above the Bayes-optimal floor,
test error against P with the floor drawn), plus results.parquet.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import study_report_start  # noqa: E402
from rhmfast.studies.report import write_report  # noqa: E402
from rhmfast.studies.store import load_rows  # noqa: E402


def short_label(learner: str) -> str:
    """"hcnn context=8 production=zipf ... task=last-token zipf_exponent=1.0" -> "hcnn last-token, Zipf a=1"."""
    model, *pairs = learner.split()
    keys = dict(pair.split("=", 1) for pair in pairs)
    label = f"{model} {keys.get('task', 'classify')}"
    if keys.get("production") == "zipf":
        label += f", Zipf a={float(keys['zipf_exponent']):g}"
    if keys.get("sparsity") not in (None, "0", "None"):
        label += f", sparse s0={keys['sparsity']}"
    return label


def main(argv=None) -> None:
    args, _ = study_report_start(__doc__, argv)
    rows = [dict(row, learner=short_label(row["learner"])) for row in load_rows(args.store)]
    paths = write_report(rows, args.out, 0.1, title="hCNN on last-token prediction and grammar variants, s = 2, "
                                                    "L = 3, m = 4")
    with open(paths["pstar.md"]) as f:
        print(f.read())


if __name__ == "__main__":
    main()
