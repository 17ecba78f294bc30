"""Label-hierarchy runs in the study pipeline: configs (rhmfast.studies.runs), grids, records, sweeps, the CLI."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest
import torch

import rhmfast.__main__ as cli
from rhmfast.studies.grid import expand, sweep_configs
from rhmfast.studies.pstar import pstar_table
from rhmfast.studies.runs import (DEFAULTS, build_model, complete_config, config_hash, data_of, hierarchy_of,
                                  learner_name, run_config, stage_size)
from rhmfast.studies.store import ResultStore, load_rows, make_record
from rhmfast.studies.sweep import describe, run_sweep, summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PSTAR_STORE = os.path.join(ROOT, "benchmarks", "results", "sweep_pstar", "results.parquet")
RHM_KEYS = ("v", "m", "s", "n_classes", "rules", "require")
ADAM_KEYS = ("lr", "weight_decay", "batch_size", "max_steps", "max_epochs", "loss_threshold")
# Tiny runs: about 0.01 - 0.1 s each on one thread.
TINY = dict(data="hierarchy", width=32, n_test=64, max_steps=20)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


# ---- complete_config and the hash ---------------------------------------------------------------

def test_complete_config_of_a_hierarchy_fills_the_layerwise_learner():
    c = complete_config(dict(data="hierarchy", P=100))
    assert (c["model"], c["trainer"], c["width"], c["activation"], c["ridge"]) == (
        "residual", "layerwise", 4096, "quadratic", 0.01)
    assert (c["gate"], c["wiring"], c["fan_in"], c["d"], c["level_size"], c["L"]) == ("parity", "tree", 2, None, None, 3)
    assert all(c[key] is None for key in RHM_KEYS), {key: c[key] for key in RHM_KEYS}
    assert all(c[key] is None for key in ADAM_KEYS), {key: c[key] for key in ADAM_KEYS}  # closed-form read-outs
    assert all(c[key] is None for key in ("momentum", "norm", "bias", "depth", "ren_features", "ren_sigma"))
    assert complete_config(c) == c and config_hash(c) == config_hash(dict(data="hierarchy", P=100))
    assert learner_name(c) == "residual"


@pytest.mark.parametrize("model, trainer, width, activation", [("residual", "e2e_all", 4096, "quadratic"),
                                                               ("residual", "e2e_top", 4096, "quadratic"),
                                                               ("mlp", "auto", 1024, "relu"),
                                                               ("mlp", "e2e_top", 1024, "relu")])
def test_complete_config_of_the_end_to_end_learners(model, trainer, width, activation):
    c = complete_config(dict(data="hierarchy", P=100, model=model, trainer=trainer))
    assert c["trainer"] == (trainer if trainer != "auto" else "e2e_top")
    assert (c["width"], c["activation"], c["lr"], c["ridge"]) == (width, activation, 1e-3, None)
    assert (c["batch_size"], c["max_steps"], c["loss_threshold"], c["weight_decay"]) == (128, 3000, 1e-3, 0.0)
    assert c["momentum"] is None and all(c[key] is None for key in RHM_KEYS)
    assert complete_config(c) == c


def test_hierarchy_hashes_differ_and_ignore_what_they_do_not_read():
    base = dict(data="hierarchy", P=100)
    assert config_hash(base) == config_hash({**base, "v": 4, "m": 3, "rules": "pcsl-2023", "momentum": 0.5,
                                             "ren_features": 7})
    others = [dict(P=100), {**base, "gate": "junta"}, {**base, "L": 4}, {**base, "d": 16}, {**base, "trainer": "e2e_all"},
              {**base, "ridge": 0.1}, {**base, "model": "mlp"}, {**base, "seed_rules": 1}]
    hashes = [config_hash(c) for c in [base] + others]
    assert len(set(hashes)) == len(hashes)
    # the RHM's model defaults are unchanged
    rhm = complete_config(dict(P=100))
    assert (rhm["data"], rhm["model"], rhm["width"], rhm["activation"], rhm["lr"], rhm["n_classes"]) == (
        "rhm", "hcnn", 64, "relu", 0.1, 8)
    assert all(rhm[key] is None for key in ("gate", "wiring", "fan_in", "d", "level_size", "ridge"))


# Hashes of the code before label hierarchies existed (HEAD's runs.py, imported standalone).
RHM_HASHES_AT_HEAD = [(dict(P=100), "dad93df21f840f68f28b"), (dict(P=100, model="fc"), "73d26c8b420e68c94a3e"),
                      (dict(P=100, model="ren"), "ae832442e6566528d3a6"),
                      (dict(P=100, trainer="layerwise_hints", v=4, L=2), "71a83dd1609efb4c3b9e"),
                      (dict(P=64, require="assumption6"), "35f2d8a61cff1d251f2b")]


@pytest.mark.parametrize("config, expected", RHM_HASHES_AT_HEAD, ids=["hcnn", "fc", "ren", "hints", "require"])
def test_rhm_configs_keep_their_hash(config, expected):
    assert config_hash(config) == expected


def test_the_stored_rhm_runs_keep_their_names():
    import pyarrow.parquet as pq  # a dependency; the table is committed with the study

    rows = pq.read_table(PSTAR_STORE).to_pylist()
    assert rows and {r["learner"] for r in rows} >= {"hcnn", "ren", "fc"}
    for r in rows:  # their configs predate data, gate, ..., ridge
        assert config_hash({key: r[key] for key in DEFAULTS if key in r}) == r["hash"], r["learner"]


# ---- hierarchy_of and the choices ---------------------------------------------------------------

@pytest.mark.parametrize("config, d, sizes", [
    (dict(L=3), 8, [4, 2, 1]),
    (dict(L=1), 2, [1]),
    (dict(L=2, gate="majority", fan_in=3), 9, [3, 1]),
    (dict(L=2, d=8), 8, [4, 2]),  # a multiple of fan_in^L: a forest of trees
    (dict(L=2, d=12), 12, [6, 3]),
    (dict(L=3, wiring="random", d=10, level_size=3), 10, [3, 3, 3]),
    (dict(L=2, wiring="random", gate="majority", fan_in=3, d=7, level_size=4), 7, [4, 4]),
])
def test_hierarchy_of(config, d, sizes):
    config = dict(data="hierarchy", P=10, **config)
    h = hierarchy_of(config)
    assert h.d == d and [len(level) for level in h.levels] == sizes and h.n_labels == sum(sizes)
    c = complete_config(config)
    assert (h.gate, h.wiring, h.fan_in) == (c["gate"], c["wiring"], c["fan_in"])
    assert type(data_of(config)) is type(h)
    assert torch.equal(h.sample(5, seed=1)[1], hierarchy_of(config).sample(5, seed=1)[1])  # seed_rules fixes it


@pytest.mark.parametrize("config, name", [
    (dict(L=2, d=6), "d must be a multiple"),
    (dict(L=2, d=0), "d must"),
    (dict(L=2, d=-4), "d must"),
    (dict(L=2, wiring="random"), "wiring='random' needs d"),
    (dict(L=2, wiring="random", d=8), "level_size"),
    (dict(L=2, wiring="random", level_size=2), "d \\(inputs\\)"),
    (dict(L=2, wiring="random", d=8, level_size=0), "level_size"),
    (dict(L=2, level_size=2), "level_size"),
    (dict(L=2, fan_in=0), "fan_in"),
    (dict(L=0), "L must"),
    (dict(gate="xor"), "gate"),
    (dict(wiring="chain"), "wiring"),
    (dict(data="tree"), "data"),
    (dict(model="hcnn"), "model"),
    (dict(model="ren"), "model"),
    (dict(trainer="sgd"), "trainer"),
    (dict(model="mlp", trainer="e2e_all"), "trainer"),
    (dict(model="mlp", trainer="layerwise"), "trainer"),
    (dict(ridge=0), "ridge"),
    (dict(trainer="e2e_top", lr=0), "lr"),
])
def test_bad_hierarchy_configs_name_the_parameter(config, name):
    with pytest.raises(ValueError, match=name):
        hierarchy_of({"data": "hierarchy", "P": 10, **config})


@pytest.mark.parametrize("model", ["residual", "mlp"])
def test_hierarchy_learners_refused_on_an_rhm(model):
    with pytest.raises(ValueError, match="model"):
        complete_config(dict(P=10, model=model))
    with pytest.raises(ValueError, match="data"):
        hierarchy_of(dict(P=10))


def test_build_model_of_each_learner():
    base = dict(data="hierarchy", P=10, L=2, width=8, seed_model=3)
    layerwise = build_model(base)
    assert (type(layerwise).__name__, layerwise.features, layerwise.write, layerwise.seed) == (
        "ResidualLayerwiseNet", "random", "sign", 3)
    for trainer in ("e2e_all", "e2e_top"):
        net = build_model({**base, "trainer": trainer})
        assert (net.features, net.write, net.width, net.activation) == ("trained", "tanh", 8, "quadratic")
    mlp = build_model({**base, "model": "mlp"})
    assert (type(mlp).__name__, mlp.d, mlp.n_out, mlp.width, mlp.activation) == ("ShallowMLP", 4, 1, 8, "relu")


# ---- grids ----------------------------------------------------------------------------------------

def test_expand_a_hierarchy_grid():
    configs = expand(dict(data="hierarchy", L=[2, 3], P=[16, 32], width=32))
    assert [(c["L"], c["P"]) for c in configs] == [(2, 16), (2, 32), (3, 16), (3, 32)]
    for c in configs:
        assert (c["data"], c["model"], c["trainer"], c["width"], c["gate"], c["wiring"]) == (
            "hierarchy", "residual", "layerwise", 32, "parity", "tree")
        assert c == complete_config(c) and c["v"] is None
    assert len({config_hash(c) for c in configs}) == 4
    learners = expand(dict(data="hierarchy", L=2, P=16, model="residual,mlp"),
                      [dict(), dict(model="residual", trainer="e2e_all,e2e_top")])
    assert [learner_name(c) for c in learners] == ["residual", "mlp", "residual-e2e_all", "residual-e2e_top"]


def test_expand_a_hierarchy_grid_from_toml(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('data = "hierarchy"\nP = "16:64:3"\n[[grid]]\nL = [2, 3]\n'
                    '[[grid]]\nwiring = "random"\nd = 12\nlevel_size = 3\nL = 4\nmodel = "mlp"\n')
    configs = sweep_configs({}, str(path))
    assert len(configs) == 9 and {c["P"] for c in configs} == {16, 32, 64}
    random = [c for c in configs if c["wiring"] == "random"]
    assert len(random) == 3 and all((c["model"], c["d"], c["level_size"], c["L"]) == ("mlp", 12, 3, 4) for c in random)


@pytest.mark.parametrize("grid, name", [
    (dict(data="hierarchy", P_scaled="1,2"), "P_scaled"),
    (dict(data="hierarchy", L=2, d="4,6", P=16), "d must be a multiple"),
    (dict(data="hierarchy", P=16, model="hcnn"), "model"),
    (dict(data="hierarchy", P=16, gate="majority"), "fan_in"),  # majority needs an odd fan-in
])
def test_expand_refuses_bad_hierarchy_grids(grid, name):
    with pytest.raises(ValueError, match=name):
        expand(grid)


def test_describe_and_summary_name_the_hierarchy():
    configs = expand(dict(data="hierarchy", L=2, P="16,32", d="4,8"),
                     [dict(), dict(wiring="random", gate="majority", fan_in=3, d=9, level_size=3, model="mlp")])
    text = describe(configs)
    assert text.splitlines()[0] == "6 runs"
    lines = text.splitlines()[1:]
    # a tree's d is named: the settings d=4 and d=8 do not share a line
    assert len(lines) == 3, text
    assert "parity tree fan_in=2 L=2 d=4: 2 P in [16, 32]" in lines[0]
    assert "parity tree fan_in=2 L=2 d=8: 2 P in [16, 32]" in lines[1]
    assert lines[2].split()[0] == "mlp" and "majority random fan_in=3 L=2 d=9 level_size=3" in lines[2]


# ---- runs and records -----------------------------------------------------------------------------

@pytest.mark.parametrize("extra, learner", [(dict(), "residual"), (dict(trainer="e2e_all"), "residual-e2e_all"),
                                            (dict(trainer="e2e_top"), "residual-e2e_top"),
                                            (dict(model="mlp"), "mlp")],
                         ids=["layerwise", "e2e_all", "e2e_top", "mlp"])
@pytest.mark.parametrize("L, P", [(2, 21), (3, 20)])
def test_run_config_and_make_record(extra, learner, L, P):
    config = dict(TINY, L=L, P=P, **extra)
    run = run_config(config)
    record = make_record(config, run)
    assert record["learner"] == learner == learner_name(config)
    assert record["hash"] == config_hash(config) and record["config"] == complete_config(config)
    assert record["config"]["data"] == "hierarchy" and 0.0 <= record["test_error"] <= 1.0
    assert math.isfinite(run.final_test_error) and not run.interrupted
    assert run.config["d"] == 2**L and run.config["level_sizes"] == [2 ** (L - i) for i in range(1, L + 1)]
    if learner == "residual":  # P counts all stages' samples: ceil(P / L) fresh samples per stage
        assert stage_size(config) == -(-P // L)
        assert [s["level"] for s in run.stages] == list(range(1, L + 1))
        assert record["P_used"] == run.samples_seen == L * -(-P // L)
        assert run.config["features"] == "random" and run.config["write"] == "sign"
    else:
        assert record["P_used"] == P and run.config["n_train"] == P
        assert run.config["labels"] == ("all" if learner == "residual-e2e_all" else "top")
        assert run.config["lr"] == 1e-3 and run.config["epochs"] == 20  # max_steps 20 of one batch per epoch
    text = summary(record)
    assert text.startswith(f"{learner} parity tree fan_in=2 L={L} P={P} seed=0: test error")


# ---- sweeps and the CLI --------------------------------------------------------------------------

def test_run_sweep_then_load_rows_and_pstar(tmp_path):
    # layerwise runs only: the first Adam step of a process costs about 1.5 s (torch's lazy imports), the
    # end-to-end learners run in test_run_config_and_make_record
    configs = expand(dict(TINY, P="16,64"), [dict(L="2,3"), dict(gate="majority", fan_in=3, L=2)])
    assert len(configs) == 6
    outcome = run_sweep(configs, str(tmp_path), engine="local", progress=False, workers=1)
    assert outcome["failures"] == [] and outcome["ran"] == 6
    rows = load_rows(tmp_path)
    assert len(rows) == 6
    # the gate varies: it names the learner's curves apart (fan_in is the setting's s)
    assert {r["learner"] for r in rows} == {"residual gate=parity", "residual gate=majority"}
    for row in rows:
        assert (row["v"], row["n_classes"], row["m"]) == (2, 2, 1) and row["n_test"] == 64
        assert row["s"] == (3 if "majority" in row["learner"] else 2)
        assert row["L"] in (2, 3) and 0.0 <= row["test_error"] <= 1.0
    parity_ps = sorted((r["L"], r["P"]) for r in rows if "parity" in r["learner"])
    assert parity_ps == [(2, 16), (2, 64), (3, 18), (3, 66)]  # P_used: L stages of ceil(P / L)
    table = pstar_table(rows, 0.1, n_boot=50)
    assert sorted((t["s"], t["L"]) for t in table) == [(2, 2), (2, 3), (3, 2)]
    assert all(t["n_c_m_L"] == 2 and t["v"] == 2 and t["m"] == 1 and t["grid"] for t in table)
    again = run_sweep(configs, str(tmp_path), engine="local", progress=False, workers=1)
    assert again["stored_before"] == 6 and again["ran"] == 0  # resumed: nothing to run


def test_cli_sweep_of_a_hierarchy(tmp_path, capsys):
    cli.main(["sweep", "--data", "hierarchy", "--L", "2", "--P", "16,32", "--width", "32", "--n_test", "64",
              "--out", str(tmp_path), "--workers", "1"])
    out = capsys.readouterr().out
    assert "2 runs" in out and re.search(r"residual +parity tree fan_in=2 L=2: 2 P in \[16, 32\]", out), out
    records = ResultStore(tmp_path).records()
    assert sorted(r["config"]["P"] for r in records) == [16, 32]
    assert all(r["learner"] == "residual" and r["config"]["width"] == 32 and r["P_used"] == r["config"]["P"]
               for r in records)


def test_cli_dry_run_names_gate_and_wiring(tmp_path):
    out = tmp_path / "store"
    done = subprocess.run([sys.executable, "-m", "rhmfast", "sweep", "--data", "hierarchy", "--L", "2,3",
                           "--P", "16,32", "--gate", "majority", "--fan_in", "3", "--wiring", "random", "--d", "9",
                           "--level_size", "3", "--model", "residual,mlp", "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "8 runs" and len(lines) == 5
    assert all("majority random fan_in=3" in line and "d=9 level_size=3" in line for line in lines[1:])
    assert not out.exists()  # a dry run runs nothing


def test_cli_refuses_p_scaled_for_a_hierarchy(tmp_path):
    with pytest.raises(SystemExit, match="P_scaled"):
        cli.main(["sweep", "--data", "hierarchy", "--P_scaled", "1", "--dry-run", "--out", str(tmp_path)])
