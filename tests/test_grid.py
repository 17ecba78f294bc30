"""Grids of runs: values, ranges, P in units of n_c m^L, seeds, TOML files, and bad grids refused before
anything runs."""
from __future__ import annotations

import pytest
import torch

import rhmfast.__main__ as cli
from rhmfast.studies.grid import expand, parse_values, sweep_configs
from rhmfast.studies.runs import complete_config, config_hash, learner_name


def test_values_lists_and_log_ranges():
    assert parse_values("P", "100,200") == [100, 200]
    assert parse_values("P", "100:10000:3") == [100, 1000, 10000]
    assert parse_values("P", "10:12:9") == [10, 11, 12]  # rounded integer sizes are deduplicated
    assert parse_values("lr", "0.5") == [0.5]
    assert parse_values("P_scaled", [1, "2:8:3"]) == [1.0, 2.0, 4.0, 8.0]
    assert parse_values("cosine", "true,false") == [True, False]
    assert parse_values("model", "hcnn,ren") == ["hcnn", "ren"]
    assert parse_values("settings", "2,3 4,2") == [(2, 3), (4, 2)]


@pytest.mark.parametrize("key, value, match", [
    ("P", "ten", "P takes int"), ("P", "100:10", "lo:hi:n"), ("P", "100:10:3", "lo <= hi"),
    ("settings", "2,3,4", "settings must be"), ("widht", "4", "unknown grid parameter"),
    ("cosine", "maybe", "true or false"), ("width", [2.5], "width takes int"),
])
def test_bad_values_name_the_parameter(key, value, match):
    with pytest.raises(ValueError, match=match):
        parse_values(key, value)


def test_grid_product_seeds_and_scaled_sizes():
    configs = expand(dict(v=8, settings="2,3 3,2", P_scaled="1,2", model="hcnn,ren", seeds="0,1", n_test=64))
    assert len(configs) == 2 * 2 * 2 * 2
    assert len({config_hash(c) for c in configs}) == len(configs)
    for c in configs:
        assert c["P"] in (8 * c["m"] ** c["L"], 2 * 8 * c["m"] ** c["L"])
        assert c["seed_sample"] == c["seed_model"] in (0, 1)
        assert c["trainer"] == {"hcnn": "sgd", "ren": "ren"}[c["model"]]
    # Explicit seeds are axes of their own; a config listed twice runs once.
    configs = expand(dict(P="32,32", seed_sample="0,1", seed_model="5", n_test=64))
    assert [(c["seed_sample"], c["seed_model"]) for c in configs] == [(0, 5), (1, 5)]


def test_toml_grids_are_united_and_flags_override(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('v = 8\nn_test = 64\nseeds = [0, 1, 2]\nwidth = 32\n\n'
                    '[[grid]]\nmodel = "hcnn"\nsettings = [[2, 3], [3, 2]]\nP_scaled = "0.5:2:3"\n\n'
                    '[[grid]]\nmodel = "fc"\nm = 2\nL = 3\nP = [50, 100]\nwidth = 16\n')
    configs = sweep_configs({}, str(path))
    hcnn = [c for c in configs if c["model"] == "hcnn"]
    fc = [c for c in configs if c["model"] == "fc"]
    assert len(hcnn) == 2 * 3 * 3 and len(fc) == 2 * 3
    assert {c["width"] for c in hcnn} == {32} and {c["width"] for c in fc} == {16}
    assert {c["width"] for c in sweep_configs({"width": "64"}, str(path))} == {64}


@pytest.mark.parametrize("grid, match", [
    (dict(model="hcnn"), "needs training-set sizes"),
    (dict(P="10", P_scaled="1"), "P or P_scaled"),
    (dict(P="10", model="cnn"), "model must be one of"),
    (dict(P="10", model="fc", trainer="layerwise"), "trainer"),
    (dict(P="2000", m=2, L=3, v=8, n_test=64), "exceeds pmax = 1024"),
    (dict(P="10", m=9, v=8), "m must be <= v"),
    (dict(P="10", width=0), "width must be an int >= 1"),
    (dict(P=[]), "no values of P"),
    (dict(P="10", settings="2,3", m=2), "settings or the m and L"),
])
def test_bad_grids_are_refused(grid, match):
    with pytest.raises(ValueError, match=match):
        expand(grid)


def test_cli_refuses_a_bad_grid_before_running(tmp_path, capsys):
    with pytest.raises(SystemExit, match="exceeds pmax"):
        cli.main(["sweep", "--v", "8", "--m", "2", "--L", "3", "--P", "5000", "--out", str(tmp_path / "s")])
    assert not (tmp_path / "s").exists()


def test_dry_run_prints_the_grid_and_its_size(tmp_path, capsys):
    cli.main(["sweep", "--v", "8", "--settings", "2,3 3,3", "--P_scaled", "0.5:4:4", "--model", "hcnn,ren",
              "--seeds", "0,1,2", "--n_test", "64", "--dry-run", "--out", str(tmp_path / "s")])
    out = capsys.readouterr().out
    assert out.startswith("48 runs")
    assert "ren" in out and "m=3 s=2 L=3" in out and "x 3 seeds (0,1,2)" in out
    assert not (tmp_path / "s").exists()


def test_learner_names_and_defaults():
    assert learner_name(dict(P=10)) == "hcnn"
    assert learner_name(dict(P=10, trainer="layerwise_hints")) == "hcnn-layerwise_hints"
    assert complete_config(dict(P=10, v=5))["n_classes"] == 5
    with pytest.raises(ValueError, match="unknown run parameter"):
        complete_config(dict(P=10, num_layers=3))


@pytest.mark.parametrize("flag, value", [("--workers", "0"), ("--threads", "0"), ("--retries", "-1")])
def test_cli_refuses_bad_engine_options(tmp_path, flag, value):
    with pytest.raises(SystemExit, match=f"{flag} must be >="):
        cli.main(["sweep", "--P", "10", "--n_test", "64", flag, value, "--out", str(tmp_path / "s")])


@pytest.mark.parametrize("engine, device, expected", [
    ("local", None, {}), ("local", "cpu", dict(device="cpu")), ("ray", None, dict(device=None, gpus=0.0)),
    ("ray", "cuda", dict(device="cuda", gpus=0.5)),
])
def test_cli_passes_the_device_to_the_engine(tmp_path, monkeypatch, engine, device, expected):
    import rhmfast.studies.sweep

    seen = {}

    def fake_run_sweep(configs, out, *, engine, **options):
        seen.update(options, engine=engine)
        return dict(seconds=0.0, ran=0, stored_before=0, failures=[])

    monkeypatch.setattr(rhmfast.studies.sweep, "run_sweep", fake_run_sweep)
    argv = ["sweep", "--P", "10", "--n_test", "64", "--engine", engine, "--out", str(tmp_path / "s")]
    argv += ["--device", device] if device else []
    argv += ["--gpus_per_run", "0.5"] if device == "cuda" else []
    cli.main(argv)
    assert seen["engine"] == engine and {k: seen.get(k) for k in expected} == expected
    if engine == "local" and device is None:
        assert "device" not in seen  # the engine's own default


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a machine with a GPU --device cuda is valid")
def test_cli_refuses_a_local_cuda_sweep_without_a_gpu(tmp_path):
    with pytest.raises(SystemExit, match="no CUDA device"):
        cli.main(["sweep", "--P", "10", "--n_test", "64", "--device", "cuda", "--out", str(tmp_path / "s")])
