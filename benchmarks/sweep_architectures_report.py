"""The report of the architectures study (benchmarks/sweeps/architectures.toml), from its result store:

    python benchmarks/sweep_architectures_report.py out/sweep_architectures benchmarks/results/sweep_architectures

``load_rows`` names each learner by the keys that vary within it (the task, its context); here the label is
the model and the task. The files are those of ``rhmfast plot`` (P* above the Bayes-optimal floor of the
last-token task, test error against P with the floor drawn), plus results.parquet.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import study_report_start  # noqa: E402
from rhmfast.studies.report import write_report  # noqa: E402
from rhmfast.studies.store import load_rows  # noqa: E402

NAMES = {"hcnn": "hCNN", "hlcn": "hLCN", "mla": "attention-only", "encoder": "encoder"}


def short_label(learner: str) -> str:
    """"mla context=8 task=last-token" -> "attention-only, last-token"."""
    model, *pairs = learner.split()
    keys = dict(pair.split("=", 1) for pair in pairs)
    return f"{NAMES.get(model, model)}, {keys.get('task', 'classify')}"


def main(argv=None) -> None:
    args, _ = study_report_start(__doc__, argv)
    rows = [dict(row, learner=short_label(row["learner"])) for row in load_rows(args.store)]
    paths = write_report(rows, args.out, 0.1, title="v = n_c = 16, m = 4, s = 2, L = 3")
    with open(paths["pstar.md"]) as f:
        print(f.read())


if __name__ == "__main__":
    main()
