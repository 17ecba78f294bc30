"""The store's reliability at its edges: readers (collect, plot, load_rows, records) never rename a file;
only files named like run records are the store's; a missing, empty or unwritable store or --out ends the
command with a message and a documented exit status; a sweep holds the store's lock; a second corruption
of a record keeps the first copy; Ctrl-C stops a sweep cleanly with exit status 130."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

import sweep_helpers

import rhmfast
import rhmfast.__main__ as cli
from rhmfast._files import check_writable_dir
from rhmfast.data.dataset import write_dataset
from rhmfast.studies.engines import execute
from rhmfast.studies.grid import expand
from rhmfast.studies.runs import config_hash
from rhmfast.studies.store import LOCK_NAME, ResultStore, StoreLockedError, check_record, collect, load_rows

GRID = dict(v=4, settings="2,2", P="12,24", seeds="0", n_test=8, width=8, max_steps=50)
GRID_ARGV = ["--v", "4", "--settings", "2,2", "--P", "12,24", "--seeds", "0", "--n_test", "8", "--width", "8",
             "--max_steps", "50", "--workers", "1"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def records():
    return [execute(c) for c in expand(GRID)]


def _run(argv, capsys) -> tuple[int, str, str]:
    """The CLI in this process: (exit status, stdout, stderr). Any exception but SystemExit fails the test
    (it would be a traceback)."""
    try:
        cli.main(argv)
        code = 0
    except SystemExit as end:
        code = end.code if isinstance(end.code, int) else 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _run_process(argv, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "rhmfast", *argv], capture_output=True, text=True, env=ENV,
                          timeout=120, **kwargs)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _snapshot(folder) -> dict:
    """Every file under folder, by relative path, with its bytes."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = open(path, "rb").read()
    return found


def _store(path, records, *, corrupt: int = 0) -> ResultStore:
    """A store of records whose first `corrupt` are truncated, beside a user's notes.json."""
    store = ResultStore(path)
    for record in records:
        store.write(record)
    for record in records[:corrupt]:
        text = open(store.path_of(record["hash"])).read()
        open(store.path_of(record["hash"]), "w").write(text[: len(text) // 2])
    (path / "notes.json").write_text('{"note": "mine"}\n')
    return store


# ---- readers rename nothing -------------------------------------------------------------------------

@pytest.fixture
def dataset_folder(tmp_path):
    folder = tmp_path / "gs"
    write_dataset(rhmfast.RHM(4, 2, 2, 2), 100, folder, shard_size=50)
    assert {"dataset.json", "grammar.json"} <= set(os.listdir(folder))
    return folder


@pytest.mark.parametrize("command", ["plot", "collect"])
def test_a_data_set_folder_is_left_byte_for_byte(dataset_folder, capsys, command):
    before = _snapshot(dataset_folder)
    code, _, err = _run([command, str(dataset_folder)], capsys)
    assert code == cli.EXIT_USAGE and "no valid run records" in err and str(dataset_folder) in err
    assert _snapshot(dataset_folder) == before  # nothing renamed, nothing written (no report, no table)


def test_a_data_set_folder_is_left_alone_by_the_installed_command(dataset_folder):
    before = _snapshot(dataset_folder)
    proc = _run_process(["plot", str(dataset_folder)])
    assert proc.returncode == 2 and "rhmfast plot: no valid run records" in proc.stderr
    assert _snapshot(dataset_folder) == before


@pytest.mark.parametrize("reader", ["collect", "plot", "load_rows", "records"])
def test_readers_skip_a_corrupt_record_and_rename_nothing(tmp_path, records, capsys, reader):
    store = _store(tmp_path / "store", records, corrupt=1)
    bad = f"{records[0]['hash']}.json"
    before = {name: data for name, data in _snapshot(store.path).items()}
    if reader in ("collect", "plot"):
        code, out, err = _run([reader, store.path, "--out", str(tmp_path / f"{reader}-out")], capsys)
        assert code == 0 and f"corrupt record {bad} skipped" in err
    elif reader == "load_rows":
        skipped = []
        assert len(load_rows(store.path, corrupt=skipped)) == len(records) - 1
        assert [name for name, _ in skipped] == [bad]
    else:
        reread = ResultStore(store.path, create=False)
        assert len(reread.records()) == len(records) - 1 and [name for name, _ in reread.corrupt] == [bad]
    assert _snapshot(store.path) == before  # notes.json and the corrupt record untouched, in place


def test_only_a_sweep_moves_a_corrupt_record_aside_and_redoes_it(tmp_path, records, capsys):
    store = _store(tmp_path / "store", records, corrupt=1)
    bad = store.path_of(records[0]["hash"])
    damaged = open(bad).read()
    code, out, _ = _run(["sweep", *GRID_ARGV, "--out", store.path], capsys)
    assert code == 0 and "moved aside" in out and "1 to run" in out
    assert open(bad + ".corrupt").read() == damaged and check_record(json.load(open(bad))) is None
    assert (tmp_path / "store" / "notes.json").read_text() == '{"note": "mine"}\n'
    assert sorted(os.listdir(store.path)) == sorted([f"{r['hash']}.json" for r in records] + [
        os.path.basename(bad) + ".corrupt", "notes.json"])  # no lock file, no temporaries


def test_a_second_corruption_keeps_the_first_copy(tmp_path, records):
    store = ResultStore(tmp_path)
    path = store.path_of(records[0]["hash"])
    for attempt in range(3):
        store.write(records[0])
        open(path, "w").write(f"broken {attempt}")
        assert store.read(records[0]["hash"], move_aside=True) is None
    assert [open(path + suffix).read() for suffix in (".corrupt", ".corrupt.1", ".corrupt.2")] == [
        "broken 0", "broken 1", "broken 2"]
    assert store.moved == {os.path.basename(path): os.path.basename(path) + ".corrupt.2"}


def test_temporaries_not_named_like_records_are_not_the_stores(tmp_path):
    store = ResultStore(tmp_path)
    (tmp_path / "notes.txt.tmp-999999999").write_text("mine")
    (tmp_path / f"{'c' * 20}.json.tmp-999999999").write_text("{")
    assert store.clean_temporaries() == 1 and os.listdir(tmp_path) == ["notes.txt.tmp-999999999"]


# ---- missing, empty or unwritable stores and outputs -----------------------------------------------

@pytest.mark.parametrize("argv, fragment", [
    (["collect", "{tmp}/nosuchdir"], "DIR {tmp}/nosuchdir does not exist"),
    (["plot", "{tmp}/nosuchdir"], "DIR {tmp}/nosuchdir does not exist"),
    (["collect", "{tmp}/empty"], "no valid run records in {tmp}/empty"),
    (["plot", "{tmp}/empty"], "no valid run records in {tmp}/empty"),
    (["collect", "{tmp}/afile"], "DIR {tmp}/afile is not a folder"),
    (["plot", "{tmp}/afile"], "{tmp}/afile is not a Parquet table"),
    (["sweep", *GRID_ARGV, "--out", "{tmp}/afile"], "--out {tmp}/afile is a file, not a folder"),
    (["sweep", *GRID_ARGV, "--out", "{tmp}/afile/store"], "{tmp}/afile is a file, not a folder"),
    (["plot", "{tmp}/store", "--out", "{tmp}/afile"], "--out {tmp}/afile is a file, not a folder"),
    (["collect", "{tmp}/store", "--out", "{tmp}/empty"], "--out {tmp}/empty is a folder"),
    (["collect", "{tmp}/store", "--out", "{tmp}/afile/t.parquet"], "{tmp}/afile is a file, not a folder"),
])
def test_bad_stores_and_outputs_end_with_a_message_and_nothing_created(tmp_path, records, capsys, argv, fragment):
    _store(tmp_path / "store", records)
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("a user's file\n")
    before = _snapshot(tmp_path)
    code, _, err = _run([a.format(tmp=tmp_path) for a in argv], capsys)
    assert code == cli.EXIT_USAGE and err.startswith(f"rhmfast {argv[0]}: ")
    assert fragment.format(tmp=tmp_path) in err
    assert _snapshot(tmp_path) == before and not (tmp_path / "nosuchdir").exists()


@pytest.mark.parametrize("command", ["plot", "collect"])
def test_a_missing_store_in_a_real_process(tmp_path, command):
    proc = _run_process([command, "nosuchdir"], cwd=tmp_path)
    assert proc.returncode == 2 and f"rhmfast {command}: DIR nosuchdir does not exist" in proc.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("path, fragment", [
    ("afile", "--out {p} is a file, not a folder"),
    ("afile/below", "cannot create it, {tmp}/afile is a file"),
])
def test_check_writable_dir(tmp_path, path, fragment):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "ok").mkdir()
    assert check_writable_dir(tmp_path / "ok", "--out") == str(tmp_path / "ok")
    assert check_writable_dir(tmp_path / "new" / "deeper", "--out") == str(tmp_path / "new" / "deeper")
    with pytest.raises(ValueError) as error:
        check_writable_dir(tmp_path / path, "--out")
    assert fragment.format(p=tmp_path / path, tmp=tmp_path) in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ["afile", "ok"]


def _read_only_cases(store: str) -> list:
    return [(["sweep", *GRID_ARGV, "--out", store], f"--out {store}: the folder is not writable"),
            (["sweep", *GRID_ARGV, "--out", f"{store}/sub"], f"cannot create it, {store} is not writable"),
            (["collect", store], f"DIR (where results.parquet goes without --out) {store}: the folder is not writable"),
            (["plot", store], f"--out (default DIR/report) {store}/report: cannot create it, {store} is not writable")]


def test_a_read_only_folder_is_refused_before_any_work(tmp_path, records, capsys):
    store = _store(tmp_path / "store", records)
    os.chmod(store.path, 0o555)
    try:
        if os.access(store.path, os.W_OK):
            pytest.skip("chmod does not stop this user from writing (root); see the emulated test below")
        before = _snapshot(tmp_path)
        for argv, fragment in _read_only_cases(store.path):
            code, _, err = _run(argv, capsys)
            assert code == cli.EXIT_USAGE and fragment in err, err
        assert _snapshot(tmp_path) == before
    finally:
        os.chmod(store.path, 0o755)


def test_an_unwritable_folder_is_refused_before_any_work_emulated(tmp_path, records, capsys, monkeypatch):
    """The same refusals where chmod cannot stop this user (root): os.access says the store is read-only."""
    store = _store(tmp_path / "store", records)
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (os.fspath(path) != store.path or not mode & os.W_OK)
                        and access(path, mode, **kw))
    before = _snapshot(tmp_path)
    for argv, fragment in _read_only_cases(store.path):
        code, _, err = _run(argv, capsys)
        assert code == cli.EXIT_USAGE and fragment in err, err
    assert _snapshot(tmp_path) == before


# ---- the store's lock -------------------------------------------------------------------------------

def test_a_second_sweep_is_refused_while_the_store_is_locked(tmp_path, capsys):
    store = ResultStore(tmp_path / "store")
    with store.lock():
        code, _, err = _run(["sweep", *GRID_ARGV, "--out", store.path], capsys)
        proc = _run_process(["sweep", *GRID_ARGV, "--out", store.path])
    for status, message in ((code, err), (proc.returncode, proc.stderr)):
        assert status == cli.EXIT_LOCKED == 75
        assert f"the result store {store.path} is in use by process {os.getpid()}" in message and "--wait" in message
    assert os.listdir(store.path) == []  # nothing ran; the lock file went with the lock


def test_the_lock_of_a_killed_process_does_not_block(tmp_path):
    store = ResultStore(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from rhmfast.studies.store import "
                               "ResultStore\nwith ResultStore(sys.argv[1]).lock():\n print('held', flush=True)\n "
                               "time.sleep(60)", str(tmp_path)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(StoreLockedError) as error:
        with store.lock():
            pass
    assert error.value.pid == holder.pid and str(holder.pid) in str(error.value)
    holder.kill()
    holder.wait()
    assert (tmp_path / LOCK_NAME).read_text().strip() == str(holder.pid)  # left behind by the killed holder
    with store.lock():  # the OS released its flock
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert not (tmp_path / LOCK_NAME).exists()


def test_wait_queues_behind_the_holder(tmp_path):
    store = ResultStore(tmp_path)
    waited, order = [], []
    held = threading.Event()

    def hold():
        with store.lock():
            held.set()
            time.sleep(0.5)
            order.append("first released")

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait()
    with store.lock(wait=True, on_wait=waited.append):
        order.append("second holds")
    thread.join()
    assert waited == [os.getpid()] and order == ["first released", "second holds"]


# ---- Ctrl-C -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_stops_a_sweep_cleanly_and_the_same_command_resumes(tmp_path, capsys):
    store = tmp_path / "store"
    # every run trains its whole budget (no loss threshold), so runs are still to do when the first is stored
    flags = dict(model="hcnn", v="8", m="2", s="2", L="3", P="200,300,400", n_test="128", max_steps="1500",
                 loss_threshold="0")
    # --pack 1: one run per task, so that a Ctrl-C after the first record finds runs not yet started
    # (tests/test_replicas.py interrupts a pack)
    argv = ["sweep", *[a for k, v in flags.items() for a in (f"--{k}", v)], "--workers", "1", "--pack", "1",
            "--out", str(store)]
    expected = sorted(config_hash(c) for c in expand(flags))
    code, out, err = sweep_helpers.interrupt_after_first_record(argv, store, ENV)
    assert code == cli.EXIT_INTERRUPTED == 130, err
    assert "Traceback" not in err and "leaked" not in err and "KeyboardInterrupt" not in err
    assert "Resume with the same command" in err and f"rhmfast sweep --model hcnn" in err
    assert "sweep interrupted" in out and "not run" in out
    names = os.listdir(store)
    assert names and all(name.endswith(".json") for name in names)  # no temporaries, no lock file left
    assert all(check_record(json.load(open(store / name)), name[:-5]) is None for name in names)
    assert len(names) < len(expected)
    code, out, _ = _run(argv, capsys)  # the same command, in this process (torch is imported already)
    assert code == 0 and f"{len(names)} already stored" in out
    assert sorted(r["hash"] for r in ResultStore(store).records()) == expected
    assert sorted(os.listdir(store)) == sorted(f"{h}.json" for h in expected)
