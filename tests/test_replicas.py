"""Replica-batched training: HierarchicalCNN.replicas, train_sgd_replicas and the sweeps' packing.

A packed run must be its solo run: the same initial weights, data, minibatch order and, on the CPU, the same
bits all the way (weights, curves, test errors), also when runs of different P (different minibatch counts and
a padded last minibatch) and different stopping epochs share a pack."""
from __future__ import annotations

import math
import os

import pytest
import torch

import sweep_helpers
from rhmfast.data.grammar import RHM
from rhmfast.models import HierarchicalCNN, HierarchicalCNNReplicas
from rhmfast.studies.engines import default_pack, plan_tasks
from rhmfast.studies.grid import expand
from rhmfast.studies.runs import config_hash, pack_key, run_config, run_pack
from rhmfast.studies.store import ResultStore
from rhmfast.studies.sweep import run_sweep
from rhmfast.train import train_sgd, train_sgd_replicas

# Width a multiple of 16: every replica's block of every tensor starts 64-byte aligned, which MKL's GEMMs need to give the
# bits they give a freshly allocated solo tensor (test_odd_widths_agree_to_rounding covers the other widths).
ARCH = dict(v=6, width=16, s=2, L=3, n_classes=6)


@pytest.fixture(scope="module")
def grammar():
    return RHM(v=6, n_classes=6, m=2, s=2, L=3, seed=3)


def _same_parameters(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("bias,norm,activation,whiten", [(False, "mf", "relu", False), (True, "std", "square", False),
                                                          (True, "mf", "relu", True)])
def test_replica_k_is_the_solo_model_bit_for_bit(rng, bias, norm, activation, whiten):
    seeds = [rng.randrange(2**32) for _ in range(3)] + [None]
    arch = dict(ARCH, norm=norm, bias=bias, activation=activation, whiten=whiten)
    torch.manual_seed(rng.randrange(2**32))
    replicas = HierarchicalCNN.replicas(4, seeds, **arch)
    assert isinstance(replicas, HierarchicalCNNReplicas) and replicas.seeds == seeds
    for k, seed in enumerate(seeds[:3]):
        solo = HierarchicalCNN(**arch, seed=seed)
        assert _same_parameters(solo, replicas.replica(k)) and replicas.replica(k).seed == seed
    tokens = torch.randint(0, ARCH["v"], (4, 9, 8))
    logits = replicas(tokens)
    assert logits.shape == (4, 9, ARCH["n_classes"])
    for k in range(4):
        assert torch.equal(logits[k], replicas.replica(k)(tokens[k]))
        assert torch.equal(logits[k], replicas.forward_replica(k, tokens[k]))


def test_subset_and_load_subset_move_replicas_exactly():
    replicas = HierarchicalCNN.replicas(3, [0, 1, 2], **ARCH, bias=True)
    sub = replicas.subset([2, 0])
    assert sub.seeds == [2, 0] and _same_parameters(sub.replica(0), replicas.replica(2))
    with torch.no_grad():
        for p in sub.parameters():
            p.add_(1.0)
    before = replicas.replica(1)
    replicas.load_subset([2, 0], sub)
    assert _same_parameters(replicas.replica(2), sub.replica(0)) and _same_parameters(replicas.replica(0), sub.replica(1))
    assert _same_parameters(replicas.replica(1), before)


@pytest.mark.parametrize("arguments,match", [
    (dict(n_replicas=2, seeds=[0]), "seeds must be a list of n_replicas=2"),
    (dict(n_replicas=0, seeds=[]), "n_replicas must be an int >= 1"),
    (dict(n_replicas=2, seeds=3), "seeds must be a list"),
])
def test_bad_replica_arguments_are_refused(arguments, match):
    with pytest.raises(ValueError, match=match):
        HierarchicalCNN.replicas(arguments["n_replicas"], arguments["seeds"], **ARCH)


def test_bad_inputs_of_the_replica_model_are_refused():
    replicas = HierarchicalCNN.replicas(2, [0, 1], **ARCH)
    with pytest.raises(ValueError, match=r"token ids \[K=2, B, s\^L=8\]"):
        replicas(torch.zeros(3, 4, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids \[K=2"):
        replicas(torch.zeros(4, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="k must be in"):
        replicas.replica(2)


SGD = dict(n_test=256, lr=0.2, batch_size=32, progress=False)


def _solo(grammar, k, seeds, n_train, max_epochs, **kw):
    model = HierarchicalCNN(**ARCH, norm="mf", seed=seeds[k])
    arguments = dict(SGD, **kw)
    if "eval_every" not in kw:
        arguments["eval_every"] = max(1, max_epochs[k] // 5)
    record = train_sgd(model, grammar, n_train[k], seed_data=seeds[k] + 100, seed_order=seeds[k] + 200,
                       max_epochs=max_epochs[k], **arguments)
    return model, record


# P = 40 and 70 have a short last minibatch (padded in the pack); 20 is below the batch size.
@pytest.mark.parametrize("options", [dict(loss_threshold=1.0), dict(loss_threshold=1e-3, cosine=True),
                                     dict(loss_threshold=0.5, scheduler="warmup", scheduler_time=3, weight_decay=1e-3,
                                          stop_check="eval", eval_every=3),
                                     dict(loss_threshold=0.5, order="pcsl", eval_at_start=True, momentum=0.0),
                                     dict(loss_threshold=0.5, online=True)])
def test_a_packed_run_is_its_solo_run_bit_for_bit(grammar, rng, options):
    seeds = [rng.randrange(1000) for _ in range(4)]
    n_train, max_epochs = [40, 70, 20, 96], [12, 9, 25, 6]
    replicas = HierarchicalCNN.replicas(4, seeds, **ARCH, norm="mf")
    ended = []
    records = train_sgd_replicas(replicas, grammar, n_train, seed_data=[s + 100 for s in seeds],
                                 seed_order=[s + 200 for s in seeds], max_epochs=max_epochs,
                                 on_stop=lambda k, record: ended.append(k), **SGD, **options)
    assert sorted(ended) == [0, 1, 2, 3]
    for k in range(4):
        model, solo = _solo(grammar, k, seeds, n_train, max_epochs, **options)
        packed = records[k]
        assert packed.config == solo.config and packed.seeds == solo.seeds and packed.trainer == solo.trainer
        assert packed.curve == solo.curve, f"replica {k}"
        assert packed.stopped_by == solo.stopped_by and packed.samples_seen == solo.samples_seen
        assert math.isclose(packed.final_test_error, solo.final_test_error, abs_tol=0) or (
            math.isnan(packed.final_test_error) and math.isnan(solo.final_test_error))
        assert _same_parameters(model, replicas.replica(k)), f"replica {k}: final weights differ"


def test_padded_minibatches_agree_with_the_solo_runs_to_rounding(grammar):
    n_train, max_epochs = [40, 70, 20, 96], [12, 9, 25, 6]
    replicas = HierarchicalCNN.replicas(4, [0, 1, 2, 3], **ARCH, norm="mf")
    records = train_sgd_replicas(replicas, grammar, n_train, seed_data=[100, 101, 102, 103],
                                 seed_order=[200, 201, 202, 203], max_epochs=max_epochs, loss_threshold=0.0,
                                 exact=False, **SGD)
    for k in range(4):
        model, solo = _solo(grammar, k, [0, 1, 2, 3], n_train, max_epochs, loss_threshold=0.0)
        assert [p["epoch"] for p in records[k].curve] == [p["epoch"] for p in solo.curve]
        for a, b in zip(model.parameters(), replicas.replica(k).parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert abs(records[k].final_test_error - solo.final_test_error) <= 2 / SGD["n_test"]
    # P = 96 is 3 whole minibatches: nothing of it is ever padded, so it is exact
    assert records[3].curve == solo.curve and _same_parameters(model, replicas.replica(3))


def test_stopped_replicas_no_longer_change_and_the_others_go_on(grammar):
    seen, ended = [], []
    replicas = HierarchicalCNN.replicas(2, [0, 1], **ARCH, norm="mf")

    def on_stop(k, record):  # replica 0 leaves the pack after its 2 epochs: its weights are final then
        ended.append((k, replicas.replica(k)))

    records = train_sgd_replicas(replicas, grammar, 64, seed_data=0, seed_order=0, max_epochs=[2, 10], eval_every=1,
                                 loss_threshold=0.0, callback=lambda k, point: seen.append((k, point["epoch"])),
                                 on_stop=on_stop, **SGD)
    assert [r.stopped_by for r in records] == ["budget", "budget"]
    assert [e for k, e in seen if k == 0] == [1, 2] and [e for k, e in seen if k == 1] == list(range(1, 11))
    assert [k for k, _ in ended] == [0, 1]
    solo = HierarchicalCNN(**ARCH, norm="mf", seed=0)
    train_sgd(solo, grammar, 64, seed_data=0, seed_order=0, max_epochs=2, eval_every=1, loss_threshold=0.0, **SGD)
    assert _same_parameters(solo, replicas.replica(0))


def test_ctrl_c_ends_every_unfinished_run_as_interrupted(grammar):
    replicas = HierarchicalCNN.replicas(3, [0, 1, 2], **ARCH, norm="mf")
    stored = []

    def callback(k, point):
        if k == 1 and point["epoch"] == 4:
            raise KeyboardInterrupt

    records = train_sgd_replicas(replicas, grammar, [32, 64, 96], seed_data=0, seed_order=0, max_epochs=[2, 20, 20],
                                 eval_every=1, loss_threshold=0.0, callback=callback,
                                 on_stop=lambda k, r: stored.append((k, r.interrupted)), **SGD)
    assert [r.interrupted for r in records] == [False, True, True]
    assert [r.stopped_by for r in records] == ["budget", "interrupted", "interrupted"]
    assert stored[0] == (0, False) and sorted(stored[1:]) == [(1, True), (2, True)]
    assert all(not math.isnan(r.final_test_error) for r in records)


@pytest.mark.parametrize("arguments,error,match", [
    (dict(n_train=[10, 20, 30]), ValueError, r"n_train must be one value or a list of one per replica \(K=2\)"),
    (dict(max_epochs=[0, 3]), ValueError, "every max_epochs must be an int >= 1"),
    (dict(optimizer="adam"), ValueError, "optimizer"),
    (dict(eval_every=[[1], [2], [3]]), ValueError, "eval_every must be one value or a list of one per replica"),
    (dict(batch_size=0), ValueError, "batch_size must be an int >= 1"),
])
def test_bad_trainer_arguments_are_refused(grammar, arguments, error, match):
    replicas = HierarchicalCNN.replicas(2, [0, 1], **ARCH)
    base = dict(n_train=32, seed_data=0, seed_order=0, max_epochs=2, progress=False)
    with pytest.raises(error, match=match):
        train_sgd_replicas(replicas, grammar, **{**base, **arguments})


def test_only_a_replica_model_of_the_grammars_shape_is_trained(grammar):
    with pytest.raises(TypeError, match="HierarchicalCNNReplicas"):
        train_sgd_replicas(HierarchicalCNN(**ARCH), grammar, 32, seed_data=0, seed_order=0)
    with pytest.raises(ValueError, match="must equal the grammar's"):
        train_sgd_replicas(HierarchicalCNN.replicas(2, [0, 1], **dict(ARCH, v=5)), grammar, 32, seed_data=0,
                           seed_order=0)


# ---- sweeps: packing ----------------------------------------------------------------------------------

TINY = dict(v="4", settings="2,3", P="12,24,40", seeds="0,1", n_test="64", width="16", max_steps="120")


def test_pack_keys_group_runs_that_differ_only_in_seeds_and_P():
    hcnn = expand(dict(TINY, model="hcnn"))
    assert len({pack_key(c) for c in hcnn}) == 1
    assert pack_key(expand(dict(TINY, model="ren", P="12"))[0]) is None
    assert pack_key(expand(dict(TINY, model="hcnn", optimizer="adam", P="12"))[0]) is None
    wider = expand(dict(TINY, model="hcnn", width="32", P="12"))[0]
    assert pack_key(wider) != pack_key(hcnn[0])


def test_plan_tasks_packs_compatible_runs_consecutive_in_P_largest_first():
    configs = expand(dict(TINY, model="hcnn,ren", seeds="0,1,2,3"))  # 12 hCNN runs, 12 Ren runs
    tasks = plan_tasks(configs, None, workers=2)
    packed = [t for t in tasks if len(t) > 1]
    assert sorted(len(t) for t in packed) == [3, 3, 3, 3]  # about two packs per worker
    wider = expand(dict(TINY, model="hcnn", width="32", seeds="0,1,2,3"))  # a second group: 24 packable runs
    assert sorted(len(t) for t in plan_tasks(configs + wider, None, workers=2)) == [1] * 12 + [6] * 4
    assert all([configs[i]["P"] for i in t] == sorted(configs[i]["P"] for i in t) for t in packed)
    assert sorted(i for t in tasks for i in t) == list(range(len(configs)))
    largest = [max(configs[i]["P"] for i in t) for t in tasks]
    assert largest == sorted(largest, reverse=True)
    assert all(len(t) == 1 for t in plan_tasks(configs, 1))
    assert sorted(len(t) for t in plan_tasks(configs, 5) if len(t) > 1) == [4, 4, 4]  # 12 in packs <= 5: even
    assert default_pack("cpu", 100, 2) == 8 and default_pack("cuda", 1000, 1) == 64 and default_pack("cpu", 3, 2) == 1
    assert default_pack("cpu", 21, 2) == 6


def test_run_pack_gives_each_configs_solo_record(rng):
    configs = expand(dict(TINY, model="hcnn", seeds=str(rng.randrange(100))))
    exact, padded = run_pack(configs), run_pack(configs, exact=False)
    for config, record, close in zip(configs, exact, padded):
        solo = run_config(config)
        assert record.curve == solo.curve and record.final_test_error == solo.final_test_error
        assert record.config == solo.config == close.config and record.seeds == solo.seeds == close.seeds
        assert abs(close.final_test_error - solo.final_test_error) <= 2 / 64


@pytest.mark.slow
def test_a_packed_sweep_stores_what_an_unpacked_one_does(tmp_path):
    configs = expand(dict(TINY, model="hcnn,ren"))
    run_sweep(configs, str(tmp_path / "packed"), progress=False, workers=1, pack=None)  # 2 packs of 3
    run_sweep(configs, str(tmp_path / "alone"), progress=False, workers=2, pack=1)
    packed = {r["hash"]: r for r in ResultStore(tmp_path / "packed").records()}
    alone = {r["hash"]: r for r in ResultStore(tmp_path / "alone").records()}
    assert sorted(packed) == sorted(alone) == sorted(config_hash(c) for c in configs)
    for name, record in packed.items():
        theirs = alone[name]
        assert record["test_error"] == theirs["test_error"] and record["result"]["curve"] == theirs["result"]["curve"]
        assert record["execution"].get("pack", 1) == (3 if record["learner"].startswith("hcnn") else 1)
    # the stores are interchangeable: a sweep over either finds everything stored
    assert run_sweep(configs, str(tmp_path / "alone"), progress=False, pack=None)["ran"] == 0


@pytest.fixture
def markers(tmp_path, monkeypatch):
    folder = tmp_path / "markers"
    folder.mkdir()
    monkeypatch.setenv(sweep_helpers.MARKERS, str(folder))
    return folder


@pytest.mark.slow
def test_a_killed_pack_loses_only_its_unfinished_runs(tmp_path, markers):
    configs = expand(dict(TINY, model="hcnn"))
    outcome = run_sweep(configs, str(tmp_path / "store"), progress=False, workers=1, pack=6,
                        run_pack=sweep_helpers.pack_dies_after_first_run)
    assert outcome["failures"] == [] and outcome["ran"] == 6
    sizes = sorted(int(line) for name in os.listdir(markers) for line in open(markers / name))
    assert sizes == [5, 6]  # the first pack died after one run was stored; the retry trained the other five
    assert sorted(r["hash"] for r in ResultStore(tmp_path / "store").records()) == sorted(map(config_hash, configs))


@pytest.mark.slow
def test_ctrl_c_of_a_packed_sweep_keeps_the_finished_runs_and_resumes_the_rest(tmp_path):
    import json
    import subprocess
    import sys

    from rhmfast.studies.store import check_record

    store = tmp_path / "store"
    # one pack of two runs: P = 24 fits in a few hundred steps, P = 4000 trains for 3000 steps
    flags = dict(model="hcnn", v="8", m="4", s="2", L="3", P="24,4000", n_test="128", width="16", max_steps="3000")
    argv = [a for k, v in flags.items() for a in (f"--{k}", v)] + ["--workers", "1", "--pack", "2", "--out",
                                                                   str(store)]
    code, out, err = sweep_helpers.interrupt_after_first_record(["sweep", *argv], store,
                                                                dict(os.environ, OMP_NUM_THREADS="1"), "pack")
    assert code == 130 and "Traceback" not in err and "Resume with the same command" in err
    names = os.listdir(store)
    assert len(names) == 1 and check_record(json.load(open(store / names[0])), names[0][:-5]) is None
    assert json.load(open(store / names[0]))["config"]["P"] == 24
    resumed = subprocess.run([sys.executable, "-m", "rhmfast", "sweep", *argv], capture_output=True, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert resumed.returncode == 0 and "1 already stored, 1 to run" in resumed.stdout
    assert sorted(os.listdir(store)) == sorted(f"{config_hash(c)}.json" for c in expand(flags))


@pytest.mark.cuda
def test_packed_runs_on_cuda_agree_with_their_solo_runs(grammar):
    n_train, max_epochs = [40, 96], [8, 5]
    replicas = HierarchicalCNN.replicas(2, [0, 1], **ARCH, norm="mf").cuda()
    records = train_sgd_replicas(replicas, grammar, n_train, seed_data=[100, 101], seed_order=[200, 201],
                                 max_epochs=max_epochs, loss_threshold=0.0, **SGD)
    for k in range(2):
        model = HierarchicalCNN(**ARCH, norm="mf", seed=k).cuda()
        solo = train_sgd(model, grammar, n_train[k], seed_data=100 + k, seed_order=200 + k, max_epochs=max_epochs[k],
                         eval_every=max(1, max_epochs[k] // 5), loss_threshold=0.0, **SGD)
        assert [p["epoch"] for p in records[k].curve] == [p["epoch"] for p in solo.curve]
        for a, b in zip(model.parameters(), replicas.replica(k).parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_the_ray_engine_packs_like_the_local_one(tmp_path):
    pytest.importorskip("ray")
    import ray

    configs = expand(dict(TINY, model="hcnn", seeds="0"))
    try:
        run_sweep(configs, str(tmp_path / "ray"), engine="ray", progress=False, workers=1, pack=2)
    finally:
        ray.shutdown()
    run_sweep(configs, str(tmp_path / "local"), progress=False, workers=2, pack=1)
    on_ray = {r["hash"]: r for r in ResultStore(tmp_path / "ray").records()}
    local = {r["hash"]: r for r in ResultStore(tmp_path / "local").records()}
    assert sorted(on_ray) == sorted(local) == sorted(config_hash(c) for c in configs)
    for name, record in on_ray.items():
        assert record["result"]["curve"] == local[name]["result"]["curve"] and record["execution"]["engine"] == "ray"
    assert sorted(r["execution"].get("pack", 1) for r in on_ray.values()) == [1, 2, 2]  # 3 runs, 2 workers


@pytest.mark.parametrize("value", ["0", "-2", "x", "1.5"])
def test_a_bad_pack_flag_exits_2_naming_it(value, capsys):
    from rhmfast import __main__ as cli

    with pytest.raises(SystemExit) as stop:
        cli.main(["sweep", "--model", "hcnn", "--P", "12", "--pack", value, "--dry-run"])
    assert stop.value.code == 2
    assert "--pack: must be an int >= 1" in capsys.readouterr().err
