"""Bad input to `rhmfast train`, `rhmfast generate` and the grid flags (`rhmfast sweep --dry-run`) is refused
before anything is created: exit status 2, one line `rhmfast <command>: ...` on stderr that names the flag,
no traceback, and nothing new in the output folder. The API refuses the same values with a ValueError or
TypeError naming the parameter. A write that fails on a full disk leaves no temporary or partial shard."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import rhmfast
import rhmfast.data.dataset as dataset_module
from rhmfast.__main__ import main
from rhmfast.data.dataset import NotEnoughSpace, open_dataset, write_dataset
from rhmfast.studies.grid import MAX_GRID_CONFIGS, expand
from rhmfast.studies.runs import complete_config

RUN = ["--v", "4", "--m", "2", "--L", "3", "--P", "20", "--n_test", "8", "--width", "4", "--max_epochs", "1"]
GRAMMAR = ["--v", "8", "--m", "2", "--L", "3"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU --device cuda is valid")


def _outputs(tmp_path, kind: str, monkeypatch):
    """The --out of a case: "new" (a path that does not exist), "file" (an existing file), "read-only" (an
    empty folder this process may not write, as os.access says), "under-file" (a path below a file)."""
    if kind == "new":
        return tmp_path / "out"
    if kind in ("file", "under-file"):
        (tmp_path / "afile").write_text("keep me")
        return tmp_path / "afile" if kind == "file" else tmp_path / "afile" / "out"
    folder = tmp_path / "ro"
    folder.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if os.fspath(path) == str(folder)
                        else access(path, mode, **kw))
    return folder


def _assert_untouched(tmp_path, kind: str, out) -> None:
    if kind == "new":
        assert not out.exists()
    elif kind == "read-only":
        assert os.listdir(out) == []
    else:
        assert (tmp_path / "afile").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == sorted({"new": [], "read-only": ["ro"]}.get(kind, ["afile"]))


def _run(argv, capsys) -> tuple[int, str]:
    """main(argv) in this process: (exit status, stderr). Any exception but SystemExit fails the test."""
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1  # a str code: Python prints it, exits with 1
        if not isinstance(exit_.code, int) and exit_.code is not None:
            print(exit_.code, file=sys.stderr)
    return code, capsys.readouterr().err


CLI_CASES = [
    # train: --out, device, threads, nproc, the grid flags
    (["train", *RUN], "file", 2, "--out"),
    (["train", *RUN], "under-file", 2, "--out"),
    (["train", *RUN], "read-only", 2, "not writable"),
    (["train", *RUN, "--device", "tpu"], "new", 2, "--device"),
    pytest.param(["train", *RUN, "--device", "cuda"], "new", 2, "--device cuda", marks=NO_CUDA),
    (["train", *RUN, "--device", "cuda:x"], "new", 2, "--device"),
    (["train", *RUN, "--threads", "0"], "new", 2, "--threads must be >= 1"),
    (["train", *RUN, "--nproc", "0"], "new", 2, "--nproc must be >= 1"),
    (["train", *RUN, "--norm", "foo"], "new", 2, "norm"),
    (["train", *RUN[:6], "--P", "20,30", *RUN[8:]], "new", 2, "runs one config"),
    (["train", *RUN, "--lr", "nan"], "new", 2, "lr"),
    # generate: --out, seeds, sizes, the disk's free space
    (["generate", *GRAMMAR, "--n", "10"], "file", 2, "--out"),
    (["generate", *GRAMMAR, "--n", "10"], "under-file", 2, "--out"),
    (["generate", *GRAMMAR, "--n", "10"], "read-only", 2, "not writable"),
    (["generate", *GRAMMAR, "--n", "10", "--seed_sample", "-1"], "new", 2, "--seed_sample"),
    (["generate", *GRAMMAR, "--n", "10", "--seed_sample", str(2 ** 64)], "new", 2, "--seed_sample"),
    (["generate", *GRAMMAR, "--n", "10", "--seed_rules", "-1"], "new", 2, "--seed_rules"),
    (["generate", *GRAMMAR, "--n", "-1"], "new", 2, "--n must be >= 0"),
    (["generate", *GRAMMAR, "--n", "10", "--shard", "0"], "new", 2, "--shard must be >= 1"),
    (["generate", *GRAMMAR, "--n", str(10 ** 12)], "new", 2, "--n 1,000,000,000,000 needs"),
    (["generate", *GRAMMAR, "--n", str(10 ** 12)], "read-only", 2, "not writable"),
    # the grid flags, checked by sweep --dry-run (which creates nothing either way)
    *[(["sweep", "--dry-run", "--P_scaled", value], "new", 2, "P_scaled")
      for value in ("inf", "nan", "0", "-1", "0.00001", "0:1:3", "1:inf:3", "1e308")],
    (["sweep", "--dry-run", "--P", "10:900:1000000000"], "new", 2, "P range lo:hi:n takes at most n = 10,000"),
    (["sweep", "--dry-run", "--P", "10", "--lr", "0.001:1:2000", "--momentum", "0.1:0.9:1000"], "new", 2,
     f"MAX_GRID_CONFIGS = {MAX_GRID_CONFIGS:,}"),
    (["sweep", "--dry-run", "--P", "10", "--norm", "foo"], "new", 2, "norm"),
    (["sweep", "--dry-run", "--P", "10", "--activation", "tanh"], "new", 2, "activation (for model 'hcnn')"),
    (["sweep", "--dry-run", "--P", "10", "--model", "ren", "--ren_feature_kind", "foo"], "new", 2, "ren_feature_kind"),
    (["sweep", "--dry-run", "--P", "10", "--ren_feature_kind", "foo"], "new", 2, "ren_feature_kind"),
    (["sweep", "--dry-run", "--P", "64", "--data", "hierarchy", "--activation", "square"], "new", 2,
     "activation (for model 'residual')"),
    (["sweep", "--dry-run", "--P", "10", "--lr", "inf"], "new", 2, "lr takes finite numbers"),
    (["sweep", "--dry-run", "--P", "10", "--momentum", "-1"], "new", 2, "momentum"),
]


@pytest.mark.parametrize("argv, status, fragment", [
    (["assumption", "--v", "0"], 2, "v must be in [2,"),
    (["assumption", *GRAMMAR, "--seed_rules", "-1"], 2, "--seed_rules must be >= 0"),
    (["assumption", *GRAMMAR, "--rules", "nope"], 2, "rules must be one of"),
    (["assumption", *GRAMMAR, "--find", "--max_seeds", "0"], 2, "--max_seeds must be >= 1"),
    (["assumption", *GRAMMAR, "--m", "9"], 2, "n_classes * m must be <="),
])
def test_assumption_refuses_bad_flags(capsys, argv, status, fragment):
    code, err = _run(argv, capsys)
    assert code == status and fragment in err and err.startswith("rhmfast assumption: ") and "Traceback" not in err


@pytest.mark.parametrize("argv, out_kind, status, fragment", CLI_CASES)
def test_cli_refuses_bad_input_before_creating_anything(tmp_path, capsys, monkeypatch, argv, out_kind, status,
                                                        fragment):
    out = _outputs(tmp_path, out_kind, monkeypatch)
    code, err = _run([*argv, "--out", str(out)], capsys)
    assert code == status, err
    assert fragment in err and f"rhmfast {argv[0]}: " in err, err
    assert "Traceback" not in err
    _assert_untouched(tmp_path, out_kind, out)


@pytest.mark.parametrize("argv, fragment", [
    (["train", *RUN, "--device", "tpu"], "rhmfast train: --device must be cpu, cuda or cuda:N, got 'tpu'"),
    (["generate", *GRAMMAR, "--n", "10", "--seed_sample", "-1"], "rhmfast generate: --seed_sample must be >= 0"),
])
def test_the_process_exits_with_status_2_and_one_message(tmp_path, argv, fragment):
    done = subprocess.run([sys.executable, "-m", "rhmfast", *argv, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and fragment in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("rhmfast ") == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("grid, error, fragment", [
    (dict(P_scaled="inf"), ValueError, "P_scaled takes finite numbers"),
    (dict(P_scaled=[float("nan")]), ValueError, "P_scaled takes finite numbers"),
    (dict(P_scaled="0"), ValueError, "P_scaled (training-set sizes in units of n_c m^L) must be > 0"),
    (dict(P_scaled=-1.0), ValueError, "P_scaled (training-set sizes in units of n_c m^L) must be > 0"),
    (dict(P_scaled="0.00001"), ValueError, "P_scaled = 1e-05 gives P = 0.00064 samples"),
    (dict(P_scaled="1", m=0), ValueError, "m must be an int >= 1"),
    (dict(P="10:900:1000000000"), ValueError, "P range lo:hi:n takes at most n = 10,000 points"),
    (dict(P="10", lr="0.001:1:2000", momentum="0.1:0.9:1000"), ValueError, "MAX_GRID_CONFIGS"),
    (dict(P="10", norm="foo"), ValueError, "norm (for model 'hcnn') must be one of ('std', 'mf')"),
    (dict(P="10", model="fc", norm="foo"), ValueError, "norm must be one of ('std', 'mf')"),
    (dict(P="10", activation="tanh"), ValueError, "activation (for model 'hcnn') must be one of"),
    (dict(P="10", model="ren", ren_feature_kind="foo"), ValueError, "ren_feature_kind must be one of"),
    (dict(P="64", data="hierarchy", model="mlp", activation="square"), ValueError, "activation (for model 'mlp')"),
    (dict(P="10", lr="inf"), ValueError, "lr takes finite numbers"),
    (dict(P="10", weight_decay=-0.5), ValueError, "weight_decay must be a finite number >= 0"),
])
def test_expand_refuses_bad_grids(grid, error, fragment):
    with pytest.raises(error) as refused:
        expand(grid)
    assert fragment in str(refused.value)


def test_the_grid_cap_counts_every_grid_before_building_any():
    with pytest.raises(ValueError, match="MAX_GRID_CONFIGS"):
        expand(dict(P="10"), [dict(lr="0.001:1:1000", momentum="0.1:0.9:999")] * 2)


@pytest.mark.parametrize("config, error, fragment", [
    (dict(P=10, norm="foo"), ValueError, "norm (for model 'hcnn')"),
    (dict(P=10, activation="tanh"), ValueError, "activation (for model 'hcnn')"),
    (dict(P=10, model="ren", ren_feature_kind="foo"), ValueError, "ren_feature_kind"),
    (dict(P=10, ren_feature_kind="foo"), ValueError, "ren_feature_kind"),
    (dict(P=10, data="hierarchy", activation="square"), ValueError, "activation (for model 'residual')"),
    (dict(P=10, lr=float("inf")), ValueError, "lr must be a number > 0 (finite), got inf"),
    (dict(P=10, momentum=float("nan")), ValueError, "momentum must be a finite number >= 0"),
    (dict(P=10, loss_threshold=-1.0), ValueError, "loss_threshold must be a finite number >= 0"),
])
def test_complete_config_refuses_bad_values(config, error, fragment):
    with pytest.raises(error) as refused:
        complete_config(config)
    assert fragment in str(refused.value)


def test_valid_choices_still_complete():
    assert complete_config(dict(P=10, activation="square", norm="std"))["activation"] == "square"
    assert complete_config(dict(P=64, data="hierarchy", activation="tanh"))["activation"] == "tanh"
    assert complete_config(dict(P=10, model="fc", activation="relu"))["activation"] is None  # fc reads none


# Data sets on disk --------------------------------------------------------------------------------------

@pytest.fixture
def grammar():
    return rhmfast.RHM(8, 2, 2, 3, seed=4)


def _no_grammar(path):
    os.remove(path / "grammar.json")


def _garbage_manifest(path):
    (path / "dataset.json").write_bytes(b"\x00{not json")


def _list_manifest(path):
    (path / "dataset.json").write_text("[1, 2]")


def _manifest_without(key):
    def damage(path):
        manifest = json.loads((path / "dataset.json").read_text())
        del manifest[key]
        (path / "dataset.json").write_text(json.dumps(manifest))
    return damage


def _manifest_escaping(path):
    manifest = json.loads((path / "dataset.json").read_text())
    manifest["shards"][0][0] = "../outside.npy"
    (path / "dataset.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, fragment", [
    (_no_grammar, "grammar.json: cannot read the data set's grammar"),
    (_garbage_manifest, "dataset.json: the data set's manifest is not valid JSON"),
    (_list_manifest, "dataset.json: not an rhmfast data set manifest"),
    (_manifest_without("shard_size"), "dataset.json: shard_size must be an int >= 1, got nothing"),
    (_manifest_without("shards"), "dataset.json: shards must be a list of 3"),
    (_manifest_escaping, "dataset.json: shards must be a list of [tokens file, labels file] pairs of file names"),
])
def test_opening_a_damaged_data_set_names_the_file(tmp_path, grammar, damage, fragment):
    write_dataset(grammar, 600, tmp_path, shard_size=200, progress=False)
    damage(tmp_path)
    with pytest.raises(ValueError) as refused:
        open_dataset(tmp_path)
    assert fragment in str(refused.value) and str(tmp_path) in str(refused.value)
    with pytest.raises(ValueError, match="dataset.json|grammar.json"):  # writing into it is refused alike
        write_dataset(grammar, 600, tmp_path, shard_size=200, progress=False)


def test_a_folder_in_a_shards_place(tmp_path, grammar, capsys):
    write_dataset(grammar, 600, tmp_path, shard_size=200, progress=False)
    os.remove(tmp_path / "tokens-00001.npy")
    os.mkdir(tmp_path / "tokens-00001.npy")
    dataset = open_dataset(tmp_path)
    assert dataset.missing() == [1]
    with pytest.raises(ValueError, match="tokens-00001.npy: shard 1 cannot be read"):
        dataset.shard(1)
    with pytest.raises(ValueError, match="tokens-00001.npy: a folder stands where shard 1's file goes"):
        write_dataset(grammar, 600, tmp_path, shard_size=200, progress=False)
    code, err = _run(["generate", *GRAMMAR, "--seed_rules", "4", "--n", "600", "--shard", "200",
                      "--out", str(tmp_path)], capsys)
    assert code == 2 and "tokens-00001.npy" in err and "Traceback" not in err


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(out="afile"), ValueError, "out "),
    (dict(out="afile/sub"), ValueError, "is a file, not a folder"),
    (dict(out="d", n=2.5), TypeError, "n must be an int"),
])
def test_write_dataset_refuses_an_output_that_is_not_a_folder(tmp_path, grammar, kwargs, error, fragment):
    (tmp_path / "afile").write_text("keep me")
    arguments = {"n": 10, "progress": False, **kwargs}
    arguments["out"] = tmp_path / arguments["out"]
    with pytest.raises(error) as refused:
        write_dataset(grammar, **arguments)
    assert fragment in str(refused.value)
    assert sorted(os.listdir(tmp_path)) == ["afile"] and (tmp_path / "afile").read_text() == "keep me"


def test_write_dataset_checks_the_free_space_first(tmp_path, grammar, monkeypatch):
    usage = dataset_module.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(dataset_module.shutil, "disk_usage", lambda path: usage._replace(free=10_000))
    with pytest.raises(NotEnoughSpace) as refused:
        write_dataset(grammar, 1000, tmp_path / "d", shard_size=300, progress=False)
    assert refused.value.free == 10_000 and refused.value.needed > 1000 * 16  # 8 token bytes + 8 label bytes
    assert isinstance(refused.value, ValueError) and "n = 1000 samples need" in str(refused.value)
    assert not (tmp_path / "d").exists()


def test_a_full_disk_leaves_no_temporary_or_partial_shard(tmp_path, capsys, monkeypatch):
    """The disk fills while shard 1 is written: the command says so (exit 1, no traceback), the partial
    file is removed, the manifest does not claim the data set complete, and the same command, once there
    is space, finishes it."""
    save = dataset_module._save_array
    calls = []

    def filling(f, array):
        calls.append(array.shape)
        if len(calls) == 3:  # shard 0's two files went through; shard 1's tokens fill the disk
            f.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        save(f, array)

    monkeypatch.setattr(dataset_module, "_save_array", filling)
    out = tmp_path / "d"
    argv = ["generate", *GRAMMAR, "--seed_rules", "4", "--seed_sample", "2", "--n", "700", "--shard", "256",
            "--out", str(out)]
    code, err = _run(argv, capsys)
    assert code == 1 and "rhmfast generate: writing" in err and "No space left on device" in err, err
    assert "Traceback" not in err
    assert sorted(os.listdir(out)) == ["dataset.json", "grammar.json", "labels-00000.npy", "tokens-00000.npy"]
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["complete"] is False
    dataset = open_dataset(out)
    assert dataset.missing() == [1, 2]
    with pytest.raises(ValueError, match="tokens-00001.npy: shard 1 cannot be read"):
        dataset.shard(1)
    monkeypatch.setattr(dataset_module, "_save_array", save)
    code, err = _run(argv, capsys)
    assert code == 0, err
    dataset = open_dataset(out)
    assert dataset.manifest["complete"] is True and dataset.missing() == [] and dataset.verify() == []
    tokens, labels = dataset.load()
    x, y = rhmfast.RHM(8, 2, 2, 3, seed=4).sample(700, seed=2)
    assert torch.equal(tokens, x) and torch.equal(labels, y)


def test_a_failed_write_of_the_api_removes_its_temporary_file(tmp_path, grammar, monkeypatch):
    def full(f, array):
        np.save(f, array[: len(array) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dataset_module, "_save_array", full)
    with pytest.raises(OSError) as failed:
        write_dataset(grammar, 100, tmp_path, shard_size=50, progress=False)
    assert failed.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path)) == ["dataset.json", "grammar.json"]
