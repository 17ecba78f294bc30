"""The main job (`rhmfast demo`): its outputs exist, and a re-run resumes from the stored records."""
from __future__ import annotations

import json
import os

import pytest

import rhmfast.__main__ as cli

TINY = ["demo", "--v", "4", "--settings", "2,2", "--grid", "0.5,1", "--ren_grid", "2", "--seeds", "0,1",
        "--n_test", "8", "--width", "8", "--fc_width", "8", "--max_steps", "20", "--ren_features", "8"]


def test_demo_writes_its_outputs_and_resumes(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "demo")
    cli.main(TINY + ["--out", out])
    for name in ("table.md", "pstar.json", "test_error_vs_P.png", "test_error_vs_P_scaled.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    (runs,) = [d for d in os.listdir(out) if d.startswith("runs-")]
    records = sorted(os.listdir(os.path.join(out, runs)))
    assert len(records) == 2 * (2 + 1 + 2)  # seeds x (hCNN P grid + Ren + fully connected)
    first = json.load(open(os.path.join(out, "pstar.json")))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(cli, "_train_one", no_training)
    cli.main(TINY + ["--out", out])
    assert json.load(open(os.path.join(out, "pstar.json")))["errors"] == first["errors"]

    # A damaged record is not trusted: that run alone is redone.
    damaged = os.path.join(out, runs, records[0])
    with open(damaged, "w") as f:
        f.write('{"final_test_err')
    calls = []
    monkeypatch.setattr(cli, "_train_one", lambda *a, **k: calls.append(a) or pytest.fail("redo reached"))
    with pytest.raises(pytest.fail.Exception, match="redo reached"):
        cli.main(TINY + ["--out", out])
    assert len(calls) == 1
