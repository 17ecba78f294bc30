"""The generation, training and sweep-engine benchmarks end to end at toy sizes (benchmarks/
bench_generate.py, bench_train.py, bench_sweep.py): their rows, goals and files, and that a smoke run
(--quick) never takes the name of a full run's result file. The layer benchmark has its own file,
test_bench_patchconv.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def run_script(script: str, prefix: str, out, *args, quick: bool = True) -> tuple[dict, str]:
    """Runs `script [--quick] ... --out out`; returns its JSON and markdown, after checking that those
    are the only files written and, for a smoke run, that their names say so."""
    flags = ["--quick"] if quick else []
    subprocess.run([sys.executable, os.path.join(BENCHMARKS, script), *flags, *args, "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=600)
    written = sorted(os.listdir(out))
    assert len(written) == 2 and all(name.startswith(prefix) for name in written)
    assert all(("_quick." in name) == quick for name in written)
    with open(out / written[0]) as f:
        return json.load(f), (out / written[1]).read_text()


@pytest.mark.slow
def test_generation_benchmark(tmp_path):
    run, markdown = run_script("bench_generate.py", "generate_cpu", tmp_path,
                              "--devices", "cpu", "--tokens", "65536", "--batch", "16")
    cpu = run["results"]["cpu"]
    assert cpu["bandwidth_bytes_per_s"] > 0
    assert {(r["v"], r["m"], r["s"], r["L"]) for r in cpu["rows"]} == {
        (32, 8, 2, 3), (16, 4, 2, 6), (64, 16, 2, 4), (8, 4, 3, 4), (32, 8, 2, 10)}
    assert {(r["impl"], r["output"]) for r in cpu["rows"]} >= {
        ("rhmfast", "tokens"), ("torch reference", "tokens"), ("per-level torch", "tokens"),
        ("rhmfast", "one-hot f32"), ("per-level torch", "one-hot f32")}
    assert all(r["tokens_per_s"] > 0 and r["speedup_vs_per_level"] > 0 for r in cpu["rows"])
    assert run["goals"] and all("met" in g for g in run["goals"])
    assert "Goals on token output" in markdown


@pytest.mark.slow
def test_training_benchmark(tmp_path):
    run, markdown = run_script("bench_train.py", "train_cpu", tmp_path, "--device", "cpu", "--width", "16",
                              "--batch", "8")
    assert run["quick"] and [r["config"] for r in run["rows"]] == ["v=32 m=8 s=2 L=3", "v=16 m=4 s=2 L=6"]
    for row in run["rows"]:
        assert row["library_ms_per_step"] > 0 and row["rhmfast_ms_per_step"] > 0
        assert row["speedup_wall"] == pytest.approx(row["library_ms_per_step"] / row["rhmfast_ms_per_step"])
        assert len(row["wall_rounds_ms"]["rhmfast"]) == run["rounds"]
    assert markdown.count("| v=") == 2


@pytest.mark.slow
def test_sweep_engine_benchmark(tmp_path):
    run, markdown = run_script("bench_sweep.py", "sweep_engines_cpu", tmp_path, "--runs", "5", "--workers", "1",
                               "--repeats", "1", "--engines", "local", quick=False)
    assert run["runs"] == 5 and run["run_time_s"] > 0
    assert [r["engine"] for r in run["rows"]] == ["in-process loop", "local"]
    assert all(r["wall_s"] > 0 and r["runs_per_s"] > 0 for r in run["rows"])
    assert "| local |" in markdown


def test_hierarchy_benchmark(tmp_path):
    run, markdown = run_script("bench_hierarchy.py", "hierarchy_cpu", tmp_path, "--n", "4096")
    assert len(run["rows"]) == 4 and all(r["rhmfast_samples_per_s"] > 0 and r["baseline_samples_per_s"] > 0
                                         for r in run["rows"])
    assert all(f"| {r['config']} |" in markdown for r in run["rows"])


def test_hierarchy_study_report(tmp_path):
    # Two depths of the parity tree at three sizes (two seeds): enough for P*, the depth fit and the figures.
    from rhmfast.studies.grid import expand
    from rhmfast.studies.sweep import run_sweep

    store, out = tmp_path / "store", tmp_path / "report"
    run_sweep(expand(dict(data="hierarchy", L=[2, 3], P=[16, 64, 512], width=256, n_test=256, seeds=[0, 1])),
              str(store), engine="local", workers=1, progress=False)
    subprocess.run([sys.executable, os.path.join(BENCHMARKS, "sweep_hierarchy_report.py"), str(store), str(out)],
                   check=True, capture_output=True, text=True, timeout=600)
    assert sorted(os.listdir(out)) == ["meta.json", "pstar.csv", "pstar.md", "pstar_vs_L.pdf", "pstar_vs_L.png",
                                       "results.parquet", "test_error_vs_P.pdf", "test_error_vs_P.png"]
    table = (out / "pstar.md").read_text()
    assert "| parity tree, fan-in 2 | residual (quadratic) | 2 | 4 | 2 |" in table
    assert "| parity tree, fan-in 2 | residual (quadratic) | 3 | 8 | 2 |" in table
    with open(out / "meta.json") as f:
        assert json.load(f)["runs"] == 12


def test_tasks_and_architectures_study_reports(tmp_path):
    # Two models on both tasks of one tiny grammar, two seeds, three sizes: the reports' labels, the floor of
    # the last-token task in the P* table, and the files of `rhmfast plot`.
    from rhmfast.studies.grid import expand
    from rhmfast.studies.sweep import run_sweep

    sys.path.insert(0, BENCHMARKS)
    from sweep_architectures_report import short_label as model_label
    from sweep_tasks_report import short_label as variant_label

    assert variant_label("hcnn context=8 production=zipf replacement=True sparsity=0 task=last-token "
                         "zipf_exponent=1.0") == "hcnn last-token, Zipf a=1"
    assert variant_label("hcnn context=None production=uniform sparsity=1 task=classify") == \
        "hcnn classify, sparse s0=1"
    assert model_label("mla context=8 task=last-token") == "attention-only, last-token"
    store = tmp_path / "store"
    run_sweep(expand(dict(v=4, m=2, s=2, L=3, P=[32, 64, 128], n_test=64, width=16, max_epochs=2, seeds=[0, 1],
                          model=["hcnn", "hlcn"], task=["classify", "last-token"])),
              str(store), engine="local", workers=1, progress=False)
    for script, labels in (("sweep_tasks_report.py", ["hcnn classify", "hcnn last-token", "hlcn classify"]),
                           ("sweep_architectures_report.py", ["hCNN, classify", "hLCN, last-token"])):
        out = tmp_path / script
        subprocess.run([sys.executable, os.path.join(BENCHMARKS, script), str(store), str(out)],
                       check=True, capture_output=True, text=True, timeout=600)
        assert {"pstar.md", "pstar.csv", "curves.csv", "results.parquet", "test_error_vs_P.png"} <= \
            set(os.listdir(out))
        table = (out / "pstar.md").read_text()
        assert "| floor |" in table and all(f"| {label} | 4 | 2 | 3 |" in table for label in labels)


def test_transformer_benchmark(tmp_path):
    run, markdown = run_script("bench_transformers.py", "transformers_cpu", tmp_path, "--rounds", "1", "--steps", "1")
    assert [(r["model"], r["layers"]) for r in run["rows"]] == [("attention-only", 3), ("encoder", 3),
                                                                ("attention-only", 4), ("encoder", 4)]
    assert all(r["library_ms_per_step"] > 0 and r["rhmfast_ms_per_step"] > 0 and len(r["wall_rounds_ms"]["rhmfast"])
               == 1 for r in run["rows"])
    assert all(f"| {r['model']} | {r['config']} |" in markdown for r in run["rows"])
