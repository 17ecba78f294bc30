"""The report of the PRX-scale sweep (benchmarks/sweeps/prx.toml), from its result store:

    python benchmarks/sweep_prx_report.py out/sweep_prx benchmarks/results/sweep_prx

Its runs differ in one more key than the generic ``rhmfast plot`` expects within a learner: the step budget
(8000 steps, 24000 for the largest setting), which ``load_rows`` would make two learners of. Here they are
one learner, the hCNN (its budget is part of each setting), so P* is fitted over all six settings; the
files are those of ``rhmfast plot``, plus results.parquet.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import study_report_start  # noqa: E402
from rhmfast.studies.report import write_report  # noqa: E402
from rhmfast.studies.store import load_rows  # noqa: E402


def main(argv=None) -> None:
    args, _ = study_report_start(__doc__, argv)
    rows = [dict(row, learner="hcnn") for row in load_rows(args.store)]
    paths = write_report(rows, args.out, 0.1, title="v = n_c = 32, s = 2, width 256")
    with open(paths["pstar.md"]) as f:
        print(f.read())


if __name__ == "__main__":
    main()
