"""The result store of sweeps: a folder with one JSON record per finished run, named by the hash of the
run's complete config (``<hash>.json``).

Records are written atomically (a temporary file in the same folder, then a rename), so a crash at any
moment leaves either the whole record or none. Only files named like records (20 hex digits, ``.json``)
are records; anything else in the folder (a user's notes, a data set's manifest) is never read, moved or
removed. A record is trusted only if it parses, has this format, its name, its stored hash and the hash
of its stored config agree, and its run finished with a finite test error; anything else is *corrupt*.
Readers (``records``, ``collect``, ``load_rows``) skip corrupt records and list them in
``ResultStore.corrupt``; only a writer that redoes their runs (a sweep, ``rhmfast train``) moves them aside
(``<hash>.json.corrupt``, then ``.corrupt.1``, ... so that no earlier copy is overwritten). A sweep holds the store's lock
(``ResultStore.lock``) while it runs, so two sweeps never run the same grid into one store at once.
``collect`` compacts the valid records into one Parquet table (pyarrow). A write that fails (a full disk)
raises StoreWriteError, which says why in words; it leaves no temporary, and the file it would have
replaced, if any, as it was.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import math
import os
import platform
import re
import socket

from rhmfast._files import pid_alive, write_error_text
from rhmfast.studies.runs import complete_config, config_hash, learner_name, varying_keys

RECORD_FORMAT = "rhmfast.run"
RECORD_VERSION = 1
_TMP = ".tmp-"
_RECORD_NAME = re.compile(r"[0-9a-f]{20}\.json")  # config_hash: the first 20 hex digits of a sha256
LOCK_NAME = ".rhmfast-sweep.lock"


class StoreLockedError(RuntimeError):
    """Another process holds a store's lock (a sweep runs into it); ``pid`` is its id, or None if unknown."""

    def __init__(self, path: str, pid: int | None):
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"the result store {path} is in use by {holder} (another sweep)")
        self.path, self.pid = path, pid


class StoreWriteError(OSError):
    """Writing a record or ``collect``'s table failed (a full disk, a quota): no temporary is left, and the
    file it would have replaced is as it was. ``errno`` is the cause's (ENOSPC for a full disk), ``path``
    the file not written; str() names it and says why in words ("no space left on the device"). A sweep
    that stops on it sets ``outcome``, its counts (as SweepInterrupted's)."""

    def __init__(self, path: str, cause: OSError, *, store: str | None = None):
        what = f"the run record {os.path.basename(path)} into the result store {store}" if store else path
        super().__init__(cause.errno, f"cannot write {what}: {write_error_text(cause)}")
        self.path, self.outcome = path, None

    def __str__(self) -> str:
        return self.strerror


def _json_safe(value):
    """value with every NaN or infinite float (a diverged run's losses) replaced by None: JSON null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def make_record(config: dict, run_record, *, execution: dict | None = None) -> dict:
    """The stored form of a finished run: its complete config and hash, the trainer's RunRecord, the
    P the analysis uses (for the Ren and residual layerwise learners, the total of their stages' samples), and where it ran. A
    diverged run is stored too, its non-finite numbers as null and no test error (null), so that it is
    not run again and the analysis counts it as missing."""
    config = complete_config(config)
    result = _json_safe(run_record.to_dict() if hasattr(run_record, "to_dict") else dict(run_record))
    stages = config["model"] == "ren" or (config["model"] == "residual" and config["trainer"] == "layerwise")
    p_used = result["samples_seen"] if stages else config["P"]
    return dict(format=RECORD_FORMAT, version=RECORD_VERSION, hash=config_hash(config), learner=learner_name(config),
                config=config, P_used=p_used, test_error=result["final_test_error"], result=result,
                execution=dict(host=socket.gethostname(), python=platform.python_version(),
                               finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                               **(execution or {})))


def check_record(record, name: str | None = None) -> str | None:
    """Why a record cannot be trusted, or None when it can."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("format") != RECORD_FORMAT or record.get("version") != RECORD_VERSION:
        return f"format {record.get('format')!r} version {record.get('version')!r} is not {RECORD_FORMAT} {RECORD_VERSION}"
    try:
        expected = config_hash(record["config"])
    except (KeyError, TypeError, ValueError) as error:
        return f"bad config: {error}"
    if record.get("hash") != expected or (name is not None and name != expected):
        return f"hash mismatch: file {name}, stored {record.get('hash')}, config {expected}"
    result = record.get("result")
    if not isinstance(result, dict) or result.get("interrupted", True):
        return "the run did not finish"
    error = record.get("test_error")
    if result.get("stopped_by") == "diverged" and error is None and result.get("final_test_error") is None:
        return None
    if not isinstance(error, (int, float)) or not math.isfinite(error) or error != result.get("final_test_error"):
        return f"bad test error {error!r}"
    return None


class ResultStore:
    """A folder of run records, one per config hash. Safe for one writer per run at a time; sweeps take
    the store's lock, and a record written twice (say by ``rhmfast train`` beside a sweep) is replaced by
    an equal one. create: make the folder if it is missing; without, a missing folder is a ValueError."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True):
        self.path = os.fspath(path)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"rhmfast: the result store {self.path} is a file, not a folder")
        if create:
            os.makedirs(self.path, exist_ok=True)
        elif not os.path.isdir(self.path):
            raise ValueError(f"rhmfast: the result store {self.path} does not exist")
        self.corrupt: list[tuple[str, str]] = []  # (file, reason) of the corrupt records found so far
        self.moved: dict[str, str] = {}  # file -> the name it was moved aside to (by read(move_aside=True))

    def path_of(self, run_hash: str) -> str:
        return os.path.join(self.path, f"{run_hash}.json")

    def write(self, record: dict) -> str:
        """Store a record atomically; returns its path. A failed write (a full disk) raises StoreWriteError
        with no temporary left and an earlier record of the same hash, if any, kept."""
        problem = check_record(record)
        if problem:
            raise ValueError(f"rhmfast: refusing to store an invalid record: {problem}")
        path = self.path_of(record["hash"])
        tmp = f"{path}{_TMP}{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                json.dump(record, f, indent=1, allow_nan=False)
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before the name points at it
            os.replace(tmp, path)
        except BaseException as error:  # Ctrl-C or a full disk mid-write: no temporary is left behind
            with contextlib.suppress(OSError):
                os.remove(tmp)
            if isinstance(error, OSError):
                raise StoreWriteError(path, error, store=self.path) from error
            raise
        return path

    def read(self, run_hash: str, *, move_aside: bool = False) -> dict | None:
        """The valid record of a run, or None. A corrupt one is listed in ``corrupt``; move_aside (for a
        writer that redoes the run, as a sweep does) also renames it to the first free
        ``<hash>.json.corrupt``, ``.corrupt.1``, ... so that the new record does not overwrite it."""
        path = self.path_of(run_hash)
        try:
            with open(path) as f:
                record = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            problem = f"unreadable: {error}"
        else:
            problem = check_record(record, run_hash)
        if problem is None:
            return record
        self.corrupt.append((os.path.basename(path), problem))
        if move_aside and os.path.isfile(path):
            self.moved[os.path.basename(path)] = os.path.basename(self._move_aside(path))
        return None

    @staticmethod
    def _move_aside(path: str) -> str:
        target, number = f"{path}.corrupt", 0
        while os.path.lexists(target):  # an earlier corruption of the same record is kept
            number += 1
            target = f"{path}.corrupt.{number}"
        os.replace(path, target)
        return target

    def hashes(self) -> list[str]:
        """The hashes of the files named like records (other files are not the store's)."""
        return sorted(name[:-5] for name in os.listdir(self.path) if _RECORD_NAME.fullmatch(name))

    def records(self) -> list[dict]:
        """Every valid record; corrupt ones are skipped (never moved) and listed in ``corrupt``."""
        return [r for r in (self.read(h) for h in self.hashes()) if r is not None]

    def clean_temporaries(self) -> int:
        """Remove the temporary files of record writers that no longer run (killed mid-write); returns how
        many. Only temporaries of records and of ``collect``'s table, by name, are touched."""
        removed = 0
        for name in os.listdir(self.path):
            head, sep, pid = name.rpartition(_TMP)
            if (sep and pid.isdigit() and (_RECORD_NAME.fullmatch(head) or head == "results.parquet")
                    and not pid_alive(int(pid))):
                os.remove(os.path.join(self.path, name))
                removed += 1
        return removed

    @contextlib.contextmanager
    def lock(self, *, wait: bool = False, on_wait=None):
        """Hold the store's lock (an flock on ``.rhmfast-sweep.lock``, which holds the holder's pid) for
        the body. Held elsewhere: StoreLockedError, or with wait, on_wait(pid) then block until it is
        released. The OS releases the lock of a process that dies, so a killed sweep never blocks the
        next; the file is removed on release. A lock file that cannot be written (a full disk):
        StoreWriteError."""
        path = os.path.join(self.path, LOCK_NAME)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:  # a full disk (no inode left), a read-only store
                raise StoreWriteError(path, error) from error
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as error:
                    if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    holder = _lock_holder(fd)
                    if not wait:
                        raise StoreLockedError(self.path, holder) from None
                    if on_wait is not None:
                        on_wait(holder)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                # The holder before us removes the file on release: a lock on a removed file is no lock
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(path))
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                break
            os.close(fd)
        try:
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError as error:  # a full disk: released below, the file removed
                raise StoreWriteError(path, error) from error
            yield self
        finally:
            with contextlib.suppress(OSError):
                os.remove(path)  # while still held, so no one locks the removed file unnoticed
            os.close(fd)


def _lock_holder(fd: int) -> int | None:
    """The pid written in a lock file, if that process runs (it may not have written it yet)."""
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and pid_alive(int(text)) else None


def record_row(record: dict) -> dict:
    """One flat table row of a record: every config key (those added after the record was stored at their
    defaults), the learner, P used, the test error, the Bayes-optimal test error (NaN: not known), the
    trainer's summary, and the curve and stages as JSON text."""
    result = record["result"]
    bayes = result.get("bayes_error")  # absent from records stored before it; null where it was NaN
    row = dict(hash=record["hash"], learner=record["learner"], **complete_config(record["config"]),
               P_used=record["P_used"],
               test_error=math.nan if record["test_error"] is None else record["test_error"],  # diverged: missing
               bayes_error=math.nan if bayes is None else bayes,
               samples_seen=result["samples_seen"],
               wall_time_s=result["wall_time_s"], samples_per_s=result["samples_per_s"],
               stopped_by=result["stopped_by"], curve=json.dumps(result["curve"]),
               stages=json.dumps(result["stages"]), host=record["execution"].get("host"),
               finished=record["execution"].get("finished"))
    return row


def _no_records(path: str, corrupt: list) -> ValueError:
    if corrupt:
        return ValueError(f"rhmfast: no valid run records in {path}: all {len(corrupt)} are corrupt "
                          f"(first: {corrupt[0][0]}, {corrupt[0][1]})")
    return ValueError(f"rhmfast: no valid run records in {path} (a result store holds <20 hex digits>.json "
                      "files, one per run)")


def collect(store_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> tuple[str, int, list]:
    """Compact the valid records of a store into one Parquet table (default ``<store>/results.parquet``).
    Returns (path, number of rows, corrupt records skipped: [(file, reason)]). Renames nothing in the
    store; a missing store, or one without valid records, is a ValueError; a failed write (a full disk),
    StoreWriteError, with no temporary left."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = ResultStore(store_dir, create=False)
    rows = [record_row(r) for r in store.records()]
    if not rows:
        raise _no_records(store.path, store.corrupt)
    out = os.path.join(store.path, "results.parquet") if out is None else os.fspath(out)
    if os.path.isdir(out):
        raise ValueError(f"rhmfast: the table's path {out} is a folder; give a file name")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    columns = sorted({key for row in rows for key in row})
    table = pa.table({key: [row.get(key) for row in rows] for key in columns})
    tmp = f"{out}{_TMP}{os.getpid()}"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, out)
    except BaseException as error:  # Ctrl-C or a full disk: no temporary, an earlier table is kept
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(error, OSError):  # pyarrow's I/O errors are OSErrors with the errno
            raise StoreWriteError(out, error) from error
        raise
    return out, len(rows), list(store.corrupt)


# Config keys that are the analysis' own axes (setting, P, replicate); any other key that varies
# between runs splits a learner's curves and is named in its label.
_ANALYSIS_AXES = {"v", "n_classes", "s", "m", "L", "P", "seed_rules", "seed_sample", "seed_model", "model", "trainer",
                  "data", "fan_in"}


def _hierarchy_setting(row: dict) -> dict:
    """A label hierarchy's run in the analysis' terms: +-1 inputs and labels (v = n_classes = 2), fan-in s,
    depth L, one rule per symbol (m = 1)."""
    return dict(v=2, n_classes=2, s=row["fan_in"], m=1)


def load_rows(source: str | os.PathLike, hashes=None, corrupt: list | None = None) -> list[dict]:
    """The rows the sample-complexity analysis reads (learner, v, n_classes, s, m, L, P, seed,
    test_error, n_test), from a result store or a Parquet table of ``collect``. P is the training-set
    size used (the Ren learner: all stages); seed numbers the replicates, a replicate being one
    (seed_rules, seed_sample, seed_model); a parameter that varies between runs otherwise (say the width)
    joins the learner's label, e.g. "hcnn width=128". hashes: only the runs of these config hashes (one
    grid's, in a store that also holds other runs); None: all. corrupt: a list that receives
    (file, reason) of each corrupt record skipped (a store's records are never renamed here). A missing
    source, a file that is not such a table, or no valid runs: ValueError."""
    source = os.fspath(source)
    found = []
    if os.path.isdir(source):
        store = ResultStore(source, create=False)
        runs = [record_row(r) for r in store.records()]
        found = store.corrupt
    elif not os.path.exists(source):
        raise ValueError(f"rhmfast: {source} does not exist (give a result store folder or a Parquet table of "
                         "rhmfast collect)")
    else:
        import pyarrow.parquet as pq

        try:
            runs = pq.read_table(source).to_pylist()
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise ValueError(f"rhmfast: {source} is not a Parquet table of rhmfast collect: {error}") from None
        missing = sorted({"hash", "learner", "P_used", "test_error", "n_test", "seed_rules", "seed_sample",
                          "seed_model", "L"} - set(runs[0] if runs else ()))
        if runs and missing:
            raise ValueError(f"rhmfast: {source} is not a table of rhmfast collect: no column {', '.join(missing)}")
    if corrupt is not None:
        corrupt.extend(found)
    if hashes is not None:
        hashes = set(hashes)
        runs = [r for r in runs if r["hash"] in hashes]
    if not runs:
        raise _no_records(source, found)
    varying = varying_keys(runs, _ANALYSIS_AXES)
    replicates = {key: i for i, key in enumerate(sorted({(r["seed_rules"], r["seed_sample"], r["seed_model"])
                                                         for r in runs}))}
    return [dict(learner=" ".join([r["learner"]] + [f"{k}={r[k]}" for k in varying[r["learner"]]]),
                 **(_hierarchy_setting(r) if r.get("data") == "hierarchy" else
                    # the targets of last-token prediction are the v symbols, whatever the grammar's labels
                    dict(v=r["v"], n_classes=r["v"] if r.get("task") == "last-token" else r["n_classes"], s=r["s"],
                         m=r["m"])), L=r["L"], P=r["P_used"],
                 seed=replicates[(r["seed_rules"], r["seed_sample"], r["seed_model"])], test_error=r["test_error"],
                 n_test=r["n_test"], bayes_error=r.get("bayes_error")) for r in runs]
