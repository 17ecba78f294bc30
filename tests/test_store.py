"""The result store: atomic records named by their config hash, corrupt records detected (never counted;
moved aside only by a writer that redoes them), and the Parquet table of `rhmfast collect`."""
from __future__ import annotations

import json
import math
import os

import pyarrow.parquet as pq
import pytest

import rhmfast.__main__ as cli
from rhmfast.studies.engines import execute
from rhmfast.studies.grid import expand
from rhmfast.studies.runs import config_hash
from rhmfast.studies.store import ResultStore, check_record, collect, load_rows

GRID = dict(v=4, settings="2,2", P="12,24", model="hcnn,ren", seeds="0", n_test=8, width=8, max_steps=50,
            ren_features=8)


@pytest.fixture(scope="module")
def records():
    return [execute(c) for c in expand(GRID)]


def test_records_round_trip_under_their_hash(tmp_path, records):
    store = ResultStore(tmp_path)
    for record in records:
        path = store.write(record)
        assert os.path.basename(path) == f"{config_hash(record['config'])}.json"
    assert sorted(r["hash"] for r in store.records()) == sorted(r["hash"] for r in records)
    assert [name for name in os.listdir(tmp_path) if not name.endswith(".json")] == []  # no temporaries left
    ren = next(r for r in records if r["learner"] == "ren")
    assert ren["P_used"] == ren["result"]["samples_seen"]  # the Ren learner's P is its stages' total


def _damage(path, how):
    record = json.load(open(path))
    if how == "truncated":
        text = open(path).read()
        open(path, "w").write(text[: len(text) // 2])
        return
    if how == "edited_config":
        record["config"]["width"] += 1
    elif how == "interrupted":
        record["result"]["interrupted"] = True
    elif how == "nan_error":
        record["test_error"] = None
    elif how == "other_format":
        record["version"] = 99
    json.dump(record, open(path, "w"))


@pytest.mark.parametrize("how", ["truncated", "edited_config", "interrupted", "nan_error", "other_format"])
def test_corrupt_records_are_moved_aside_and_not_counted(tmp_path, records, how):
    store = ResultStore(tmp_path)
    for record in records:
        store.write(record)
    victim = records[0]["hash"]
    _damage(store.path_of(victim), how)
    assert store.read(victim) is None and os.path.exists(store.path_of(victim))  # reading renames nothing
    store.corrupt.clear()
    assert store.read(victim, move_aside=True) is None
    assert os.path.exists(store.path_of(victim) + ".corrupt") and not os.path.exists(store.path_of(victim))
    assert [name for name, _ in store.corrupt] == [f"{victim}.json"]
    assert len(store.records()) == len(records) - 1


def test_a_record_with_a_wrong_name_is_not_trusted(tmp_path, records):
    store = ResultStore(tmp_path)
    path = store.write(records[0])
    os.replace(path, store.path_of(records[1]["hash"]))
    assert store.read(records[1]["hash"]) is None
    assert "hash mismatch" in store.corrupt[0][1]


def test_invalid_records_are_never_written(tmp_path, records):
    bad = dict(records[0], test_error=float("nan"))
    assert check_record(bad)
    with pytest.raises(ValueError, match="invalid record"):
        ResultStore(tmp_path).write(bad)


def test_temporaries_of_dead_writers_are_removed(tmp_path):
    store = ResultStore(tmp_path)
    dead = tmp_path / f"{'a' * 20}.json.tmp-999999999"
    live = tmp_path / f"{'b' * 20}.json.tmp-{os.getpid()}"
    dead.write_text("{")
    live.write_text("{")
    assert store.clean_temporaries() == 1
    assert not dead.exists() and live.exists()


def test_collect_writes_one_parquet_row_per_valid_record(tmp_path, records, capsys):
    store = ResultStore(tmp_path)
    for record in records:
        store.write(record)
    _damage(store.path_of(records[-1]["hash"]), "truncated")
    cli.main(["collect", str(tmp_path)])
    captured = capsys.readouterr()
    assert "corrupt record" in captured.err and f"wrote {len(records) - 1} runs" in captured.out
    table = pq.read_table(tmp_path / "results.parquet").to_pylist()
    assert sorted(r["hash"] for r in table) == sorted(r["hash"] for r in records[:-1])
    by_hash = {r["hash"]: r for r in records}
    for row in table:
        record = by_hash[row["hash"]]
        assert row["test_error"] == record["test_error"] and row["P_used"] == record["P_used"]
        assert row["m"] == 2 and row["learner"] == record["learner"]
        assert json.loads(row["curve"]) == record["result"]["curve"]


def test_load_rows_keeps_only_the_runs_asked_for(tmp_path, records):
    store = ResultStore(tmp_path)
    for record in records:
        store.write(record)
    assert len(load_rows(tmp_path)) == len(records)
    hcnn = [r["hash"] for r in records if r["learner"] == "hcnn"]
    rows = load_rows(tmp_path, hashes=hcnn)
    assert len(rows) == len(hcnn) and {r["learner"] for r in rows} == {"hcnn"}
    collect(tmp_path)
    assert load_rows(tmp_path / "results.parquet", hashes=hcnn) == rows


def test_collect_refuses_an_empty_store(tmp_path):
    with pytest.raises(ValueError, match="no valid run records"):
        collect(tmp_path)


def test_a_diverged_run_is_stored_and_counted_as_missing(tmp_path):
    """A run whose loss went to NaN is stored (not redone on every resume), its non-finite numbers as JSON
    null, and the analysis reads its test error as missing, beside the other runs of the grid."""
    grid = dict(v=4, settings="2,3", P="32", n_test=16, width=8, lr="0.1,1000", activation="square",
                max_epochs=5, batch_size=8)
    store = ResultStore(tmp_path)
    for record in (execute(c) for c in expand(grid)):
        store.write(record)
    records = {r["config"]["lr"]: r for r in store.records()}
    assert len(records) == 2 and records[1000.0]["test_error"] is None
    assert records[1000.0]["result"]["stopped_by"] == "diverged" and check_record(records[1000.0]) is None
    assert None in [point["train_loss"] for point in records[1000.0]["result"]["curve"]]
    rows = {r["learner"]: r for r in load_rows(tmp_path)}
    assert math.isnan(rows["hcnn lr=1000.0"]["test_error"]) and 0 <= rows["hcnn lr=0.1"]["test_error"] <= 1
    table = collect(tmp_path)[0]
    assert sum(math.isnan(e) for e in pq.read_table(table).column("test_error").to_pylist()) == 1
