"""The main job (`rhmfast demo`): a sweep into OUT/runs and the report of its runs in OUT; a re-run
trains nothing, a damaged record is redone and only that one, and the report covers this grid only."""
from __future__ import annotations

import csv
import json
import os

import pytest

import rhmfast.__main__ as cli
from rhmfast.studies.store import ResultStore

# 10 runs: seeds x (hCNN at 2 sizes + Ren at 1 + fully connected at 2)
TINY = ["demo", "--v", "4", "--settings", "2,2", "--grid", "0.5,1", "--ren_grid", "2", "--seeds", "0,1",
        "--n_test", "8", "--width", "8", "--fc_width", "8", "--max_steps", "20", "--ren_features", "8",
        "--workers", "1"]
REPORT = ("pstar.md", "pstar.csv", "curves.csv", "scaling.csv", "test_error_vs_P.png", "test_error_vs_P.pdf",
          "test_error_vs_P_scaled.png", "test_error_vs_P_scaled.pdf", "pstar_vs_nc_mL.png", "pstar_vs_nc_mL.pdf")


def _pstar(out):
    with open(os.path.join(out, "pstar.csv")) as f:
        return list(csv.DictReader(f))


def test_demo_reports_and_resumes(tmp_path, trained, capsys):
    out = str(tmp_path / "demo")
    cli.main(TINY + ["--out", out])
    for name in REPORT:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    store = ResultStore(os.path.join(out, "runs"))
    assert len(trained) == 10 and sorted(trained) == store.hashes()
    assert [r["learner"] for r in _pstar(out)] == ["hcnn", "ren", "fc"]
    printed = capsys.readouterr().out
    assert "| hCNN (SGD) | 4 | 2 | 2 | 16 | 2 |" in printed and "10 of 10 runs finished" in printed
    first = _pstar(out)

    # A re-run finds every run stored: it trains nothing and reports the same.
    trained.clear()
    cli.main(TINY + ["--out", out])
    assert trained == [] and _pstar(out) == first

    # A damaged record is not trusted: that run alone is redone, to the same result.
    victim = store.hashes()[3]
    before = json.load(open(store.path_of(victim)))
    with open(store.path_of(victim), "w") as f:
        f.write('{"format": "rhmfast.run", "test_err')
    cli.main(TINY + ["--out", out])
    assert trained == [victim]
    assert os.path.exists(store.path_of(victim) + ".corrupt")
    assert store.read(victim)["test_error"] == before["test_error"] and _pstar(out) == first

    # Other flags are another grid: the report covers its runs only (here a subset, all stored).
    trained.clear()
    cli.main([*TINY, "--seeds", "0", "--out", out])
    assert trained == [] and {r["n_seeds"] for r in _pstar(out)} == {"1"}


@pytest.mark.parametrize("flags, match", [
    (["--settings", "2"], "settings must be"),
    (["--grid", "0.5,lots"], "P_scaled takes float"),
    (["--grid", "100"], "exceeds pmax"),
    (["--eps", "2"], "eps must be"),
])
def test_bad_flags_end_the_demo_before_it_runs(tmp_path, trained, flags, match):
    with pytest.raises(SystemExit, match=match):
        cli.main([*TINY, *flags, "--out", str(tmp_path / "demo")])
    assert trained == [] and not (tmp_path / "demo").exists()
