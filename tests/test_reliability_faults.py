"""Faults while the commands write: a full disk (ENOSPC, simulated at the lowest write the store does), a
store held by another process, Ctrl-C, and a corrupt record that `rhmfast train` redoes. Each ends with
its documented exit status and one `rhmfast <command>: ...` message that says what happened (no
traceback); nothing partial is left in the store, the records written before are kept byte for byte,
and the same command run again does only the missing runs."""
from __future__ import annotations

import errno
import json
import os
import pathlib
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

import rhmfast.__main__ as cli
from rhmfast.studies import engines
from rhmfast.studies.engines import execute
from rhmfast.studies.grid import expand
from rhmfast.studies.runs import config_hash
from rhmfast.studies.store import LOCK_NAME, ResultStore, StoreWriteError, check_record

ENV = dict(os.environ, OMP_NUM_THREADS="1")
REAL_DUMP = json.dump
NO_SPACE = "no space left on the device"

# One tiny run for train (about a second in this process)
TRAIN = dict(v="4", m="2", L="3", P="20", n_test="8", width="4", max_epochs="1")
TRAIN_ARGV = ["train", *[a for k, v in TRAIN.items() for a in (f"--{k}", v)]]
# A sweep of 3 tiny runs
SWEEP = dict(model="hcnn", v="4", m="2", s="2", L="3", P="32,48,64", n_test="16", width="8", max_steps="20")
SWEEP_ARGV = ["sweep", *[a for k, v in SWEEP.items() for a in (f"--{k}", v)], "--workers", "1"]
# The demo on 5 tiny runs (hCNN at 2 sizes, Ren at 1, fully connected at 2; one seed)
DEMO_ARGV = ["demo", "--v", "4", "--settings", "2,2", "--grid", "0.5,1", "--ren_grid", "2", "--seeds", "0",
             "--n_test", "8", "--width", "8", "--fc_width", "8", "--max_steps", "20", "--ren_features", "8",
             "--workers", "1"]


def _run(argv, capsys) -> tuple[int, str, str]:
    """The CLI in this process: (exit status, stdout, stderr). Any exception but SystemExit fails the test
    (in a real process it would be a traceback); a str exit code is printed on stderr, as Python does."""
    capsys.readouterr()
    try:
        cli.main(argv)
        code = 0
    except SystemExit as end:
        code = end.code if isinstance(end.code, int) else 1
        if isinstance(end.code, str):
            print(end.code, file=sys.stderr)
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def _full_disk_at(monkeypatch, folder, nth: int, code: int = errno.ENOSPC) -> list:
    """Make the nth json.dump into a file in folder (a record's temporary) write part of the record and fail
    as a full disk does; the others, and every other json.dump, work. Returns the files dumped into."""
    real, calls = json.dump, []

    def dump(obj, f, *args, **kwargs):
        if os.path.dirname(getattr(f, "name", "")) == os.fspath(folder):
            calls.append(f.name)
            if len(calls) == nth:
                f.write('{"format": "rhmfast.run", "ha')
                f.flush()
                raise OSError(code, os.strerror(code))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(json, "dump", dump)
    return calls


def _records_in(folder) -> dict:
    """{file name: bytes} of every file in folder, checking that each is a valid record (no temporary, no
    lock file, nothing else)."""
    found = {}
    for name in os.listdir(folder):
        assert name.endswith(".json"), f"{name} left in {folder}"
        data = pathlib.Path(folder, name).read_bytes()
        assert check_record(json.loads(data), name[:-5]) is None, name
        found[name] = data
    return found


@pytest.fixture(scope="module")
def train_record():
    (config,) = expand(TRAIN)
    return execute(config)


@pytest.fixture
def in_process(monkeypatch):
    """The local engine replaced by one that runs each config in this process (no workers to spawn);
    in_process.stop_after = n makes it raise KeyboardInterrupt, as Ctrl-C does, before its (n+1)th run.
    in_process.trained lists the hashes it ran."""

    class InProcess:
        trained = None  # set below
        stop_after = None

        def __init__(self, **options):
            pass

        def map(self, configs, on_result, on_failure):
            for index, config in enumerate(configs):
                if index == InProcess.stop_after:
                    raise KeyboardInterrupt
                InProcess.trained.append(config_hash(config))
                on_result(config, execute(config))

    InProcess.trained = []
    monkeypatch.setitem(engines.ENGINES, "local", InProcess)
    return InProcess


# ---- (a) train redoes a corrupt record and keeps it aside ---------------------------------------------

def _damaged(record: dict, how: str) -> bytes:
    text = json.dumps(record)
    if how == "truncated":
        return text[: len(text) // 2].encode()
    if how == "unfinished":
        return json.dumps({**record, "result": {**record["result"], "interrupted": True}}).encode()
    if how == "not JSON":
        return b"\x00\x01 not a record"
    raise AssertionError(how)


@pytest.mark.parametrize("how, earlier, aside, why", [
    ("truncated", False, ".corrupt", "unreadable"),
    ("unfinished", False, ".corrupt", "the run did not finish"),
    ("not JSON", False, ".corrupt", "unreadable"),
    ("truncated", True, ".corrupt.1", "unreadable"),  # a copy kept from an earlier corruption stays
])
def test_train_moves_a_corrupt_record_aside_and_redoes_it(tmp_path, capsys, train_record, how, earlier, aside, why):
    name = f"{train_record['hash']}.json"
    damaged = _damaged(train_record, how)
    (tmp_path / name).write_bytes(damaged)
    if earlier:
        (tmp_path / f"{name}.corrupt").write_bytes(b"the first corruption")
    code, out, err = _run([*TRAIN_ARGV, "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert f"corrupt record {name} moved aside to {name}{aside} ({why}" in out and "its run is redone" in out
    assert (tmp_path / f"{name}{aside}").read_bytes() == damaged
    if earlier:
        assert (tmp_path / f"{name}.corrupt").read_bytes() == b"the first corruption"
    redone = json.loads((tmp_path / name).read_bytes())
    assert check_record(redone, train_record["hash"]) is None and redone["execution"]["engine"] == "train"
    kept = [name, f"{name}.corrupt"] + ([f"{name}.corrupt.1"] if earlier else [])
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    code, out, _ = _run([*TRAIN_ARGV, "--out", str(tmp_path)], capsys)  # now stored: nothing redone
    assert code == 0 and "already stored" in out and "moved aside" not in out


def test_train_on_a_full_disk_stores_nothing_partial(tmp_path, capsys, monkeypatch, train_record):
    _full_disk_at(monkeypatch, tmp_path, 1)
    code, _, err = _run([*TRAIN_ARGV, "--out", str(tmp_path)], capsys)
    assert code == cli.EXIT_FAILED == 1
    assert (f"rhmfast train: cannot write the run record {train_record['hash']}.json into the result store "
            f"{tmp_path}: {NO_SPACE}; the run is not stored") in err
    assert os.listdir(tmp_path) == []


# ---- (c) a full disk under the store's writes ---------------------------------------------------------

def _fail_os(monkeypatch, name: str, folder, code: int) -> None:
    """os.<name> (fsync of a file descriptor, replace of a path) fails with code for files in folder."""
    real = getattr(os, name)

    def failing(first, *args, **kwargs):
        target = os.readlink(f"/proc/self/fd/{first}") if isinstance(first, int) else os.fspath(first)
        if os.path.dirname(target) == os.fspath(folder):
            raise OSError(code, os.strerror(code))
        return real(first, *args, **kwargs)

    monkeypatch.setattr(os, name, failing)


@pytest.mark.parametrize("where", ["json.dump", "fsync", "replace"])
@pytest.mark.parametrize("code, why", [(errno.ENOSPC, NO_SPACE), (errno.EDQUOT, "the disk quota is exceeded")])
def test_a_failed_record_write_leaves_no_temporary_and_the_old_record(tmp_path, monkeypatch, train_record, where,
                                                                      code, why):
    store = ResultStore(tmp_path)
    path = store.write(train_record)
    before = pathlib.Path(path).read_bytes()
    if where == "json.dump":
        _full_disk_at(monkeypatch, tmp_path, 1, code)
    else:
        _fail_os(monkeypatch, where, tmp_path, code)
    newer = {**train_record, "execution": {**train_record["execution"], "host": "elsewhere"}}  # valid, other bytes
    with pytest.raises(StoreWriteError) as failed:
        store.write(newer)
    assert isinstance(failed.value, OSError) and failed.value.errno == code and failed.value.path == path
    assert str(failed.value) == (f"cannot write the run record {train_record['hash']}.json into the result store "
                                 f"{tmp_path}: {why}")
    assert os.listdir(tmp_path) == [os.path.basename(path)] and pathlib.Path(path).read_bytes() == before


def test_a_sweep_stops_on_a_full_disk_and_the_same_command_does_the_rest(tmp_path, capsys, monkeypatch, trained):
    store = tmp_path / "store"
    argv = [*SWEEP_ARGV, "--out", str(store)]
    hashes = [config_hash(c) for c in expand(SWEEP)]
    dumped = _full_disk_at(monkeypatch, store, 2)  # the 2nd record: the first is written, the third never runs
    code, out, err = _run(argv, capsys)
    assert code == cli.EXIT_FAILED == 1, err
    assert len(dumped) == 2 and trained == hashes
    assert (f"rhmfast sweep: cannot write the run record {os.path.basename(dumped[1]).split('.tmp-')[0]} into the "
            f"result store {store}: {NO_SPACE}; stopped") in err
    assert "free some space and run the same command again" in err and "rhmfast sweep --model hcnn" in err
    assert "sweep stopped after" in out and "1 runs done now, 0 stored before, 0 failed, 2 not run" in out
    first = _records_in(store)  # no temporary, no lock file: one valid record (the sweep's first run)
    assert len(first) == 1 and list(first)[0][:-len(".json")] in hashes
    done = list(first)[0][:-len(".json")]

    monkeypatch.setattr(json, "dump", REAL_DUMP)  # space freed
    trained.clear()
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert "1 already stored, 2 to run" in out and trained == [h for h in hashes if h != done]
    after = _records_in(store)
    assert sorted(after) == sorted(f"{h}.json" for h in hashes)
    assert after[f"{done}.json"] == first[f"{done}.json"]  # the first record untouched



# A sweep process whose 2nd record write fails as on a full disk: argv[1] is the store, the rest the command
FULL_DISK_PROCESS = """
import errno, json, os, sys
real, calls = json.dump, []
def dump(obj, f, *args, **kwargs):
    if os.path.dirname(getattr(f, "name", "")) == sys.argv[1]:
        calls.append(f.name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(obj, f, *args, **kwargs)
json.dump = dump
from rhmfast.__main__ import main
main(sys.argv[2:])
"""


def test_a_full_disk_ends_a_real_sweep_process_with_status_1(tmp_path):
    store = str(tmp_path / "store")
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_PROCESS, store, *SWEEP_ARGV, "--out", store],
                          capture_output=True, text=True, env=ENV, timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr
    assert f"into the result store {store}: {NO_SPACE}; stopped" in proc.stderr
    for noise in ("Traceback", "leaked", "Exception ignored"):
        assert noise not in proc.stderr, proc.stderr
    assert len(_records_in(store)) == 1


def test_a_full_disk_under_the_lock_file_ends_with_a_message(tmp_path, capsys, monkeypatch):
    store = tmp_path / "store"

    def full(fd, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "ftruncate", full)
    lock = ResultStore(store).lock()
    with pytest.raises(StoreWriteError, match=f"cannot write {store / LOCK_NAME}: {NO_SPACE}"), lock:
        pass
    code, _, err = _run([*SWEEP_ARGV, "--out", str(store)], capsys)
    assert code == cli.EXIT_FAILED and f"rhmfast sweep: cannot write {store / LOCK_NAME}: {NO_SPACE}" in err
    assert os.listdir(store) == []


class _Arrow:
    """Faults of collect's write: pyarrow's write_table writes part of the table, then fails as pyarrow
    does on a full disk (an OSError with the errno); or the rename of the finished temporary fails."""

    @staticmethod
    def write_table(monkeypatch, folder):
        def write_table(table, where, *args, **kwargs):
            with open(where, "wb") as f:
                f.write(b"PAR1 partial")
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

        monkeypatch.setattr(pq, "write_table", write_table)

    @staticmethod
    def replace(monkeypatch, folder):
        _fail_os(monkeypatch, "replace", folder, errno.ENOSPC)


@pytest.mark.parametrize("fault", ["write_table", "replace"])
@pytest.mark.parametrize("earlier", [False, True])
def test_collect_on_a_full_disk_leaves_no_partial_table(tmp_path, capsys, monkeypatch, train_record, fault, earlier):
    store = ResultStore(tmp_path / "store")
    store.write(train_record)
    table = tmp_path / "store" / "results.parquet"
    if earlier:
        assert _run(["collect", store.path], capsys)[0] == 0
    before = {path.name: path.read_bytes() for path in pathlib.Path(store.path).iterdir()}
    getattr(_Arrow, fault)(monkeypatch, store.path)
    code, _, err = _run(["collect", store.path], capsys)
    assert code == cli.EXIT_FAILED == 1, err
    assert f"rhmfast collect: cannot write {table}: {NO_SPACE}; nothing written (no partial table is left)" in err
    after = {path.name: path.read_bytes() for path in pathlib.Path(store.path).iterdir()}
    assert after == before  # no temporary; an earlier table byte for byte


# ---- (b) the demo: a held store, Ctrl-C, a full disk ----------------------------------------------------

DEMO_FAULTS = [
    # fault, exit status, stderr fragments, stdout fragments, records the stopped demo leaves
    ("locked", cli.EXIT_LOCKED,
     ["rhmfast demo: the result store {runs} is in use by process {pid}", "run the same command again"], [], 0),
    ("ctrl-c before any run", cli.EXIT_INTERRUPTED,
     [("rhmfast demo: interrupted; every finished run is stored in {runs}. Resume with the same command:\n"
       "  rhmfast demo --v 4 --settings 2,2")], ["demo interrupted after", "0 runs done now, 0 stored before"], 0),
    ("ctrl-c after one run", cli.EXIT_INTERRUPTED,
     [("rhmfast demo: interrupted; every finished run is stored in {runs}. Resume with the same command:\n"
       "  rhmfast demo --v 4 --settings 2,2")],
     ["1 of 5 runs finished (1 run now, 0 stored before, then interrupted)", "demo interrupted after",
      "1 runs done now, 0 stored before, 0 failed, 4 not run"], 1),
    ("full disk at the 2nd record", cli.EXIT_FAILED,
     ["rhmfast demo: cannot write the run record", f"into the result store {{runs}}: {NO_SPACE}; stopped",
      "free some space and run the same command again", "rhmfast demo --v 4 --settings 2,2"],
     ["demo stopped after", "1 runs done now, 0 stored before, 0 failed, 4 not run"], 1),
]


@pytest.mark.parametrize("fault, status, err_fragments, out_fragments, left", DEMO_FAULTS)
def test_the_demo_stops_cleanly_and_the_same_command_resumes(tmp_path, capsys, monkeypatch, in_process, fault, status,
                                                             err_fragments, out_fragments, left):
    out = tmp_path / "demo"
    runs = out / "runs"
    argv = [*DEMO_ARGV, "--out", str(out)]
    if fault == "locked":
        with ResultStore(runs).lock():
            code, stdout, err = _run(argv, capsys)
    else:
        if fault.startswith("ctrl-c"):
            in_process.stop_after = left
        else:
            _full_disk_at(monkeypatch, runs, 2)
        code, stdout, err = _run(argv, capsys)
    assert code == status, err
    for fragment in err_fragments:
        assert fragment.format(runs=runs, pid=os.getpid()) in err, err
    for fragment in out_fragments:
        assert fragment in stdout, stdout
    ran = 0 if fault == "locked" else left + fault.startswith("full disk")  # the unwritten run ran
    assert "KeyboardInterrupt" not in err and len(in_process.trained) == ran
    stored = _records_in(runs)
    assert len(stored) == left
    assert os.path.exists(out / "pstar.md") == (fault == "ctrl-c after one run")  # a report of what finished

    monkeypatch.setattr(json, "dump", REAL_DUMP)  # the store released, space freed
    in_process.stop_after = None
    in_process.trained.clear()
    code, stdout, err = _run(argv, capsys)
    assert code == 0, err
    assert f"{left} already stored, {5 - left} to run" in stdout and "5 of 5 runs finished" in stdout
    assert not {name[:-5] for name in stored} & set(in_process.trained) and len(in_process.trained) == 5 - left
    after = _records_in(runs)
    assert len(after) == 5 and all(after[name] == data for name, data in stored.items())


def test_a_locked_demo_exits_75_in_a_real_process(tmp_path):
    runs = tmp_path / "demo" / "runs"
    with ResultStore(runs).lock():
        proc = subprocess.run([sys.executable, "-m", "rhmfast", *DEMO_ARGV, "--out", str(tmp_path / "demo")],
                              capture_output=True, text=True, env=ENV, timeout=120, check=False)
    assert proc.returncode == 75, proc.stderr
    assert f"rhmfast demo: the result store {runs} is in use by process {os.getpid()}" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("rhmfast demo: ") == 1
    assert os.listdir(runs) == [] and os.listdir(tmp_path / "demo") == ["runs"]


@pytest.mark.parametrize("flags, fragment", [
    (["--settings", "2"], "rhmfast demo: settings must be"),
    (["--eps", "2"], "rhmfast demo: eps must be"),
])
def test_bad_demo_flags_exit_2_before_anything_is_created(tmp_path, capsys, in_process, flags, fragment):
    code, _, err = _run([*DEMO_ARGV, *flags, "--out", str(tmp_path / "demo")], capsys)
    assert code == cli.EXIT_USAGE == 2 and fragment in err, err
    assert in_process.trained == [] and os.listdir(tmp_path) == []


def test_a_demo_out_that_is_a_file_exits_2(tmp_path, capsys, in_process):
    (tmp_path / "afile").write_text("keep me")
    code, _, err = _run([*DEMO_ARGV, "--out", str(tmp_path / "afile")], capsys)
    assert code == 2 and f"rhmfast demo: --out {tmp_path / 'afile'} is a file, not a folder" in err, err
    assert (tmp_path / "afile").read_text() == "keep me" and in_process.trained == []


@pytest.mark.parametrize("command, fragments", [
    ("sweep", ["75   another sweep", "130  interrupted", "a full disk"]),
    ("demo", ["75   another sweep or demo", "2    bad flags or --out", "a full disk",
              "130  interrupted (Ctrl-C): every finished run is stored, the same command resumes the rest"]),
    ("collect", ["1    writing the table failed (a full disk", "130  interrupted"]),
])
def test_the_exit_statuses_are_in_the_help(capsys, command, fragments):
    code, out, _ = _run([command, "--help"], capsys)
    assert code == 0 and "exit status:" in out
    for fragment in fragments:
        assert " ".join(fragment.split()) in " ".join(out.split()), out


def test_plot_full_disk_exits_1_without_traceback(tmp_path, monkeypatch, capsys, in_process):
    # A store with one record is enough: the report's first write fails as on a full disk.
    from rhmfast.studies import report as report_module
    from rhmfast.studies.sweep import run_sweep

    store = tmp_path / "store"
    run_sweep(expand(dict(model="hcnn", v=4, m=2, s=2, L=3, P=32, n_test=16, width=8, max_steps=20)), str(store),
              progress=False)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report_module, "write_report", full)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["plot", str(store), "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "no space left on the device" in err and "Traceback" not in err


def test_sweep_interrupted_while_building_its_grid_exits_130(tmp_path, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_grid_from_args", interrupted)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sweep", "--P", "32", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert exit_.value.code == 130 and "nothing was run" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()
