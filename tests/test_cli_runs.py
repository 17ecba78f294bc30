"""`rhmfast train` (one run, also data-parallel under torchrun) and `rhmfast plot` on a store."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import rhmfast
import rhmfast.__main__ as cli
from rhmfast.studies.store import ResultStore

RUN = ["--v", "4", "--m", "2", "--L", "3", "--P", "203", "--n_test", "57", "--width", "8", "--max_epochs", "6",
       "--batch_size", "32"]


def test_train_stores_one_run_and_skips_it_when_stored(tmp_path, capsys):
    cli.main(["train", *RUN, "--out", str(tmp_path)])
    (record,) = ResultStore(tmp_path).records()
    assert record["config"]["P"] == 203 and record["execution"]["engine"] == "train"
    assert len(record["result"]["curve"]) >= 1
    cli.main(["train", *RUN, "--out", str(tmp_path)])
    assert "already stored" in capsys.readouterr().out


def test_train_refuses_grids_and_layerwise_data_parallel(tmp_path):
    with pytest.raises(SystemExit, match="runs one config"):
        cli.main(["train", "--P", "10,20", "--n_test", "64", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="SGD only"):
        cli.main(["train", "--P", "10", "--model", "ren", "--nproc", "2", "--n_test", "64", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="nproc must be >= 1"):
        cli.main(["train", "--P", "10", "--nproc", "0", "--n_test", "64", "--out", str(tmp_path)])


@pytest.mark.slow
def test_train_nproc_2_matches_one_process(tmp_path):
    """The same run under torchrun with 2 gloo ranks: same name (hash), same test errors, losses equal up
    to float reduction order (the ranks sum their gradients in another order than one process does)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        proc = subprocess.run([sys.executable, "-m", "rhmfast", "train", *RUN, *extra, "--out", str(tmp_path / name)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    (one,) = ResultStore(tmp_path / "one").records()
    (two,) = ResultStore(tmp_path / "two").records()
    assert one["hash"] == two["hash"] and two["execution"] == {**two["execution"], "engine": "torchrun", "world_size": 2}
    assert [p["test_error"] for p in one["result"]["curve"]] == [p["test_error"] for p in two["result"]["curve"]]
    assert one["test_error"] == two["test_error"]
    for a, b in zip(one["result"]["curve"], two["result"]["curve"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)


def test_plot_writes_the_report_of_a_store(tmp_path, capsys):
    cli.main(["sweep", "--v", "4", "--settings", "2,3 3,2", "--P_scaled", "0.5,1,2", "--model", "hcnn,ren",
              "--seeds", "0,1", "--n_test", "8", "--width", "8", "--max_steps", "100", "--ren_features", "8",
              "--workers", "1", "--out", str(tmp_path / "store")])
    cli.main(["plot", str(tmp_path / "store"), "--eps", "rand/10"])
    out = capsys.readouterr().out
    assert "P*" in out and "hCNN" in out
    report = tmp_path / "store" / "report"
    for name in ("pstar.csv", "pstar.md", "curves.csv", "test_error_vs_P.png", "test_error_vs_P.pdf",
                 "test_error_vs_P_scaled.png", "pstar_vs_nc_mL.pdf"):
        assert (report / name).stat().st_size > 0, name
    cli.main(["collect", str(tmp_path / "store")])
    cli.main(["plot", str(tmp_path / "store" / "results.parquet"), "--out", str(tmp_path / "again"), "--eps", "rand/10"])
    assert (tmp_path / "again" / "pstar.csv").read_text() == (report / "pstar.csv").read_text()


@pytest.mark.cuda
@pytest.mark.slow
def test_train_torchrun_nccl_on_one_gpu_matches_one_process(tmp_path):
    """The NCCL path on one GPU: torchrun with a single rank (NCCL process group, sharded data, all-reduce)
    stores the run a plain process on cuda stores, with the same test errors."""
    from rhmfast.studies.distributed import torchrun_command

    train = ["-m", "rhmfast", "train", *RUN, "--device", "cuda"]
    for name, command in (("one", [sys.executable, *train]), ("nccl", torchrun_command(train, 1))):
        done = subprocess.run([*command, "--out", str(tmp_path / name)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
    (one,) = ResultStore(tmp_path / "one").records()
    (nccl,) = ResultStore(tmp_path / "nccl").records()
    assert nccl["execution"]["engine"] == "torchrun" and nccl["execution"]["world_size"] == 1
    assert one["hash"] == nccl["hash"] and one["execution"]["device"] == nccl["execution"]["device"] == "cuda"
    assert [p["test_error"] for p in one["result"]["curve"]] == [p["test_error"] for p in nccl["result"]["curve"]]
    for a, b in zip(one["result"]["curve"], nccl["result"]["curve"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("trainer", [["--model", "ren"], ["--trainer", "layerwise"], ["--trainer", "layerwise_hints"]])
def test_train_runs_every_trainer_on_the_device(tmp_path, device, trainer):
    cli.main(["train", *RUN, *trainer, "--device", device, "--out", str(tmp_path)])
    (record,) = ResultStore(tmp_path).records()
    assert record["execution"]["device"] == device and 0 <= record["test_error"] <= 1


def test_info_prints_the_backends_as_json(capsys):
    cli.main(["info"])
    info = json.loads(capsys.readouterr().out)
    assert info == json.loads(json.dumps(rhmfast.backends()))
