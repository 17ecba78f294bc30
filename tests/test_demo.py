"""The demo command end to end on a tiny grid: every output is written and the JSON is strict."""
import json
import math

import torch

from rhmfast.__main__ import main


def test_demo_writes_records_table_pstar_and_plots(tmp_path, restore_threads):
    out = tmp_path / "demo"
    main(["demo", "--settings", "2,3", "--grid", "1,4", "--ren_grid", "8,32", "--seeds", "0,1", "--max_steps", "10",
          "--n_test", "64", "--ren_features", "32", "--out", str(out)])
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 12 and "hcnn_m2_L3_P256_seed1.json" in runs and "fc_m2_L3_P64_seed0.json" in runs
    record = json.loads((out / "runs" / "hcnn_m2_L3_P64_seed0.json").read_text())
    assert record["config"]["n_train"] == 64 and record["seeds"]["data"] == 0 and record["curve"]
    summary = json.loads((out / "pstar.json").read_text(), parse_constant=lambda c: math.nan)
    assert all(not (isinstance(v, float) and math.isnan(v)) for r in summary["pstar"] for v in r.values())
    assert {(r["learner"], r["m"], r["L"]) for r in summary["pstar"]} == {("hcnn", 2, 3), ("ren", 2, 3), ("fc", 2, 3)}
    assert "P* / (n_c m^L)" in (out / "table.md").read_text()
    for png in ("test_error_vs_P.png", "test_error_vs_P_scaled.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert torch.get_num_threads() == 1  # the demo's default; restore_threads puts it back


def test_demo_stops_on_ctrl_c_and_summarises_the_finished_runs(tmp_path, restore_threads, monkeypatch):
    import rhmfast.train as train_module

    real = train_module.train_sgd
    calls = []

    def interrupted_on_third_call(*args, **kwargs):
        calls.append(1)
        record = real(*args, **kwargs)
        if len(calls) == 3:
            record.interrupted, record.stopped_by = True, "interrupted"
        return record

    monkeypatch.setattr(train_module, "train_sgd", interrupted_on_third_call)
    out = tmp_path / "demo"
    main(["demo", "--settings", "2,3", "--grid", "1,4", "--ren_grid", "8", "--seeds", "0,1", "--max_steps", "10",
          "--n_test", "64", "--out", str(out)])
    assert len(calls) == 3  # nothing ran after the interruption
    assert len(list((out / "runs").iterdir())) == 3  # the interrupted run's partial record is kept too
    summary = json.loads((out / "pstar.json").read_text())
    assert [r["learner"] for r in summary["pstar"]] == ["hcnn"]
    assert summary["errors"]["hcnn_m2_L3"].keys() == {"64"} and len(summary["errors"]["hcnn_m2_L3"]["64"]) == 2
