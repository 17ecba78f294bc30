"""The result store of sweeps: a folder with one JSON record per finished run, named by the hash of the
run's complete config (``<hash>.json``).

Records are written atomically (a temporary file in the same folder, then a rename), so a crash at any
moment leaves either the whole record or none. A record is trusted only if it parses, has this format,
its name, its stored hash and the hash of its stored config agree, and its run finished with a finite
test error; anything else is *corrupt*: it is moved aside (``<hash>.json.corrupt``) and the run is done
again. ``collect`` compacts the valid records into one Parquet table (pyarrow).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import socket

from rhmfast._files import pid_alive
from rhmfast.studies.runs import complete_config, config_hash, learner_name, varying_keys

RECORD_FORMAT = "rhmfast.run"
RECORD_VERSION = 1
_TMP = ".tmp-"


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
    """A folder of run records, one per config hash. Safe for one writer per run at a time; two sweeps
    on one folder at worst both run a config, and the later rename wins with an equal record."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        os.makedirs(self.path, exist_ok=True)
        self.corrupt: list[tuple[str, str]] = []  # (file, reason) of the records moved aside so far

    def path_of(self, run_hash: str) -> str:
        return os.path.join(self.path, f"{run_hash}.json")

    def write(self, record: dict) -> str:
        """Store a record atomically; returns its path."""
        problem = check_record(record)
        if problem:
            raise ValueError(f"rhmfast: refusing to store an invalid record: {problem}")
        path = self.path_of(record["hash"])
        tmp = f"{path}{_TMP}{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
        return path

    def read(self, run_hash: str) -> dict | None:
        """The valid record of a run, or None; a corrupt one is moved aside so the run is redone."""
        path = self.path_of(run_hash)
        try:
            with open(path) as f:
                record = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            self._quarantine(path, f"unreadable: {error}")
            return None
        problem = check_record(record, run_hash)
        if problem:
            self._quarantine(path, problem)
            return None
        return record

    def _quarantine(self, path: str, why: str) -> None:
        os.replace(path, f"{path}.corrupt")
        self.corrupt.append((os.path.basename(path), why))

    def hashes(self) -> list[str]:
        return sorted(name[:-5] for name in os.listdir(self.path) if name.endswith(".json"))

    def records(self) -> list[dict]:
        """Every valid record (corrupt ones are moved aside and listed in ``corrupt``)."""
        return [r for r in (self.read(h) for h in self.hashes()) if r is not None]

    def clean_temporaries(self) -> int:
        """Remove the temporary files of writers that no longer run (killed mid-write); returns how many."""
        removed = 0
        for name in os.listdir(self.path):
            head, sep, pid = name.rpartition(_TMP)
            if sep and pid.isdigit() and not pid_alive(int(pid)):
                os.remove(os.path.join(self.path, name))
                removed += 1
        return removed


def record_row(record: dict) -> dict:
    """One flat table row of a record: every config key, the learner, P used, the test error, the
    trainer's summary, and the curve and stages as JSON text."""
    result = record["result"]
    row = dict(hash=record["hash"], learner=record["learner"], **record["config"], P_used=record["P_used"],
               test_error=math.nan if record["test_error"] is None else record["test_error"],  # diverged: missing
               samples_seen=result["samples_seen"],
               wall_time_s=result["wall_time_s"], samples_per_s=result["samples_per_s"],
               stopped_by=result["stopped_by"], curve=json.dumps(result["curve"]),
               stages=json.dumps(result["stages"]), host=record["execution"].get("host"),
               finished=record["execution"].get("finished"))
    return row


def collect(store_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> tuple[str, int, list]:
    """Compact the valid records of a store into one Parquet table (default ``<store>/results.parquet``).
    Returns (path, number of rows, corrupt records found and moved aside)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = ResultStore(store_dir)
    rows = [record_row(r) for r in store.records()]
    if not rows:
        raise ValueError(f"rhmfast: no valid run records in {store.path}")
    out = os.path.join(store.path, "results.parquet") if out is None else os.fspath(out)
    columns = sorted({key for row in rows for key in row})
    table = pa.table({key: [row.get(key) for row in rows] for key in columns})
    tmp = f"{out}{_TMP}{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    return out, len(rows), list(store.corrupt)


# Config keys that are the analysis' own axes (setting, P, replicate); any other key that varies
# between runs splits a learner's curves and is named in its label.
_ANALYSIS_AXES = {"v", "n_classes", "s", "m", "L", "P", "seed_rules", "seed_sample", "seed_model", "model", "trainer",
                  "data", "fan_in"}


def _hierarchy_setting(row: dict) -> dict:
    """A label hierarchy's run in the analysis' terms: +-1 inputs and labels (v = n_classes = 2), fan-in s,
    depth L, one rule per symbol (m = 1)."""
    return dict(v=2, n_classes=2, s=row["fan_in"], m=1)


def load_rows(source: str | os.PathLike, hashes=None) -> list[dict]:
    """The rows the sample-complexity analysis reads (learner, v, n_classes, s, m, L, P, seed,
    test_error, n_test), from a result store or a Parquet table of ``collect``. P is the training-set
    size used (the Ren learner: all stages); seed numbers the replicates, a replicate being one
    (seed_rules, seed_sample, seed_model); a parameter that varies between runs otherwise (say the width)
    joins the learner's label, e.g. "hcnn width=128". hashes: only the runs of these config hashes (one
    grid's, in a store that also holds other runs); None: all."""
    source = os.fspath(source)
    if os.path.isdir(source):
        runs = [record_row(r) for r in ResultStore(source).records()]
    else:
        import pyarrow.parquet as pq

        runs = pq.read_table(source).to_pylist()
    if hashes is not None:
        hashes = set(hashes)
        runs = [r for r in runs if r["hash"] in hashes]
    if not runs:
        raise ValueError(f"rhmfast: no valid run records in {source}")
    varying = varying_keys(runs, _ANALYSIS_AXES)
    replicates = {key: i for i, key in enumerate(sorted({(r["seed_rules"], r["seed_sample"], r["seed_model"])
                                                         for r in runs}))}
    return [dict(learner=" ".join([r["learner"]] + [f"{k}={r[k]}" for k in varying[r["learner"]]]),
                 **(_hierarchy_setting(r) if r.get("data") == "hierarchy" else
                    dict(v=r["v"], n_classes=r["n_classes"], s=r["s"], m=r["m"])), L=r["L"], P=r["P_used"],
                 seed=replicates[(r["seed_rules"], r["seed_sample"], r["seed_model"])], test_error=r["test_error"],
                 n_test=r["n_test"]) for r in runs]
