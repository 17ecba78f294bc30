"""Data-parallel SGD: two CPU ranks under torchrun (gloo) give single-process train_sgd's trajectory, offline
and online, stop together on an interrupt; the shards partition the sets; misuse raises clear errors."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import rhmfast
from rhmfast.data import LastToken
from rhmfast.studies import distributed
from rhmfast.data.grammar import shard_range
from rhmfast.models import HierarchicalCNN
from rhmfast.train import train_sgd

GRAMMAR = dict(v=8, m=2, s=2, L=3, seed=1)
MODEL = dict(v=8, width=16, s=2, L=3, n_classes=8, norm="std", seed=0)
# Odd sizes: uneven train/test shards, a short last minibatch, online minibatches of 17 + 16.
RUNS = {
    "offline": dict(n_train=250, n_test=101, batch_size=32, lr=4.0, max_epochs=6, eval_every=1, seed_data=3,
                    seed_order=4, weight_decay=1e-4, cosine=True),
    "online": dict(n_train=198, n_test=101, batch_size=33, lr=4.0, max_epochs=6, eval_every=2, seed_data=5,
                   online=True),
    "callback_interrupt": dict(n_train=250, n_test=101, batch_size=32, lr=4.0, max_epochs=50, eval_every=1),
    "sigint_on_rank1": dict(n_train=64, n_test=16, batch_size=16, max_epochs=10**6, eval_every=10**6,
                            loss_threshold=0.0),
    # the last-token task: inputs with a mask token (the model embeds v + 1 ids), a Bayes-optimal error > 0
    "last_token": dict(n_train=250, n_test=101, batch_size=32, lr=4.0, max_epochs=4, eval_every=1, seed_data=3),
}
LAST_TOKEN_MODEL = dict(MODEL, v=9)
# Float32 sums of the same per-sample gradients in another order (two partial sums added by the all-reduce,
# sum then divide instead of mean) differ by a few ulps per step; a few epochs of SGD amplify that to
# ~1e-7..1e-6 relative. A wrong shard, a lost or doubled sample or a wrong scale changes losses by >1e-3.
RTOL = 1e-5

WORKER = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    import torch
    import rhmfast
    from rhmfast.studies.distributed import init_from_env, shutdown, train_sgd_distributed
    from rhmfast.models import HierarchicalCNN
    from rhmfast.data import LastToken

    torch.set_num_threads(1)
    grammar_args, model_args, runs = json.loads(sys.argv[1])
    out = sys.argv[2]
    rank, world_size = init_from_env()
    g = rhmfast.RHM(**grammar_args)
    records = {}
    for name, kwargs in runs.items():
        data = LastToken(g) if name == "last_token" else g
        model = HierarchicalCNN(**dict(model_args, v=data.input_vocab))
        with torch.no_grad():  # rank 1 starts elsewhere: the broadcast from rank 0 must make them equal
            for p in model.parameters():
                p.add_(rank)
        callback = None
        if name == "callback_interrupt":
            def callback(point):
                if point["epoch"] == 2:
                    raise KeyboardInterrupt
        if name == "sigint_on_rank1" and rank == 1:
            def interrupt_once_training():
                while signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                    time.sleep(0.01)
                time.sleep(0.3)
                os.kill(os.getpid(), signal.SIGINT)
            threading.Thread(target=interrupt_once_training, daemon=True).start()
        record = train_sgd_distributed(model, data, progress=False, callback=callback, **kwargs)
        records[name] = dict(record.to_dict(), state={k: v.tolist() for k, v in model.state_dict().items()})
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(records, f)
    shutdown()
""")


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every run of RUNS on two gloo ranks in one torchrun: {run name: [rank 0's record, rank 1's]}."""
    tmp = tmp_path_factory.mktemp("dist")
    script = tmp / "worker.py"
    script.write_text(WORKER)
    package_root = str(Path(rhmfast.__file__).resolve().parents[1])  # the ranks import this rhmfast
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    command = distributed.torchrun_command([str(script), json.dumps([GRAMMAR, MODEL, RUNS]), str(tmp)], 2)
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-12000:]
    ranks = [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]
    return {name: [ranks[0][name], ranks[1][name]] for name in RUNS}


def single_process(name, **extra):
    data = rhmfast.RHM(**GRAMMAR)
    data = LastToken(data) if name == "last_token" else data
    model = HierarchicalCNN(**(LAST_TOKEN_MODEL if name == "last_token" else MODEL))
    record = train_sgd(model, data, progress=False, **RUNS[name], **extra)
    return record, model


def assert_same_run(distributed_record, single):
    d, s = distributed_record, single.to_dict()
    assert d["trainer"] == "train_sgd" and d["config"] == dict(s["config"], world_size=2)
    assert d["seeds"] == s["seeds"]
    assert [c["epoch"] for c in d["curve"]] == [c["epoch"] for c in s["curve"]]
    assert [c["samples_seen"] for c in d["curve"]] == [c["samples_seen"] for c in s["curve"]]
    assert [c["test_error"] for c in d["curve"]] == [c["test_error"] for c in s["curve"]]
    assert [c["test_accuracy"] for c in d["curve"]] == [c["test_accuracy"] for c in s["curve"]]
    assert [c["test_loss"] for c in d["curve"]] == pytest.approx([c["test_loss"] for c in s["curve"]], rel=RTOL)
    assert [c["train_loss"] for c in d["curve"]] == pytest.approx([c["train_loss"] for c in s["curve"]], rel=RTOL)
    assert d["final_test_error"] == s["final_test_error"]
    assert d["bayes_error"] == pytest.approx(s["bayes_error"], rel=1e-12, abs=0)
    assert (d["samples_seen"], d["stopped_by"], d["interrupted"]) == (s["samples_seen"], s["stopped_by"],
                                                                      s["interrupted"])


def assert_ranks_agree(records):
    """Both ranks return the same record (but for timing) and end with the same parameters."""
    a, b = ({k: v for k, v in r.items() if k not in ("wall_time_s", "samples_per_s")} for r in records)
    assert a == b


@pytest.mark.parametrize("name", ["offline", "online", "last_token"])
def test_two_ranks_follow_the_single_process_trajectory(two_ranks, name):
    single, model = single_process(name)
    assert len(single.curve) >= 3 and single.curve[-1]["train_loss"] < 0.8 * single.curve[0]["train_loss"]
    assert_same_run(two_ranks[name][0], single)
    assert_ranks_agree(two_ranks[name])
    for key, value in model.state_dict().items():
        torch.testing.assert_close(torch.tensor(two_ranks[name][0]["state"][key]), value, rtol=1e-4, atol=1e-5)


def test_callback_interrupt_on_rank0_stops_every_rank_where_train_sgd_stops(two_ranks):
    def interrupt(point):
        if point["epoch"] == 2:
            raise KeyboardInterrupt

    single, _ = single_process("callback_interrupt", callback=interrupt)
    assert single.interrupted and [c["epoch"] for c in single.curve] == [1, 2]
    assert_same_run(two_ranks["callback_interrupt"][0], single)
    assert_ranks_agree(two_ranks["callback_interrupt"])


def test_ctrl_c_on_one_rank_ends_the_run_on_all_ranks_together(two_ranks):
    records = two_ranks["sigint_on_rank1"]
    assert all(r["interrupted"] and r["stopped_by"] == "interrupted" for r in records)
    assert records[0]["samples_seen"] > 0 and 0 <= records[0]["final_test_error"] <= 1
    assert_ranks_agree(records)


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
@pytest.mark.parametrize("n", [0, 1, 5, 64, 101])
def test_shards_are_disjoint_balanced_and_cover_the_range(n, world_size):
    parts = [shard_range(n, r, world_size) for r in range(world_size)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(hi == next_lo for (_, hi), (next_lo, _) in zip(parts, parts[1:]))  # contiguous, in rank order
    assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1


@pytest.mark.parametrize("grammar", [dict(v=8, m=2, s=2, L=3, seed=1), dict(v=8, m=2, s=2, L=7, seed=1)],
                         ids=["index-mode", "iid-mode"])  # pmax = 2^10, 2^130
def test_sharded_split_concatenates_to_the_split(grammar):
    g = rhmfast.RHM(**grammar)
    whole = g.split(50, 13, seed=2)
    shards = [g.split(50, 13, seed=2, shard=(r, 3)) for r in range(3)]
    for part in range(2):  # train, test
        for item in range(2):  # tokens, labels
            assert torch.equal(torch.cat([shard[part][item] for shard in shards]), whole[part][item])
    with pytest.raises(ValueError, match="rank"):
        g.split(50, 13, shard=(3, 3))


def test_without_a_process_group_it_raises_a_clear_error():
    assert not torch.distributed.is_initialized()
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        distributed.train_sgd_distributed(HierarchicalCNN(**MODEL), rhmfast.RHM(**GRAMMAR), 16, n_test=16)


def test_init_from_env_outside_torchrun_names_the_missing_variables(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="RANK, LOCAL_RANK, WORLD_SIZE"):
        distributed.init_from_env()


def test_launch_torchrun_runs_rhmfast_in_n_processes_and_returns_the_exit_code():
    command = distributed.torchrun_command(["-m", "rhmfast", "info"], 2)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"] and command[-4:] == ["-m", "--", "rhmfast", "info"]
    assert "--standalone" in command and command[command.index("--nproc_per_node") + 1] == "2"
    assert distributed.launch_torchrun(["no-such-command"], 1) != 0
    assert distributed.launch_torchrun(["info"], 2) == 0
    with pytest.raises(ValueError, match="nproc"):
        distributed.torchrun_command(["-m", "rhmfast"], 0)
