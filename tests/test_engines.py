"""Engines: every run of a grid is stored once; a worker killed mid-run costs only that run, which is
retried; a run that keeps killing its worker or raises is reported, never stored. The Ray engine runs on
a local 2-CPU Ray."""
from __future__ import annotations

import os

import pytest

import sweep_helpers
from rhmfast.studies.grid import expand
from rhmfast.studies.runs import config_hash
from rhmfast.studies.store import ResultStore
from rhmfast.studies.sweep import run_sweep

GRID = {**sweep_helpers.TINY_FLAGS, "seeds": "0"}  # 4 runs: each death costs a worker start-up


@pytest.fixture(scope="module")
def marker_folder(tmp_path_factory):
    # Set once, before Ray starts: Ray's worker processes keep the environment they started with.
    folder = tmp_path_factory.mktemp("markers")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(sweep_helpers.MARKERS, str(folder))
        yield folder


@pytest.fixture
def markers(marker_folder):
    for name in os.listdir(marker_folder):
        os.remove(marker_folder / name)
    return marker_folder


def _ray_options():
    pytest.importorskip("ray")
    from ray import cloudpickle
    # Ray workers import functions by module name: ship the test helpers by value instead.
    cloudpickle.register_pickle_by_value(sweep_helpers)
    return dict(workers=2)


ENGINE_OPTIONS = {"local": lambda: dict(workers=2), "ray": _ray_options}


@pytest.fixture(scope="module")
def ray_session():
    yield
    if "ray" in os.sys.modules:
        import ray
        ray.shutdown()


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_killed_worker_costs_only_its_run_which_is_retried(tmp_path, markers, engine, ray_session):
    configs = expand(GRID)
    outcome = run_sweep(configs, str(tmp_path / "store"), engine=engine, progress=False,
                        run=sweep_helpers.die_first_time, **ENGINE_OPTIONS[engine]())
    assert outcome["failures"] == [] and outcome["ran"] == len(configs)
    assert sorted(os.listdir(markers)) == sorted(config_hash(c) for c in configs)  # every run died once
    stored = ResultStore(tmp_path / "store").records()
    assert sorted(r["hash"] for r in stored) == sorted(config_hash(c) for c in configs)
    assert {r["execution"]["engine"] for r in stored} == {engine}


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_runs_that_always_die_or_raise_are_reported_not_stored(tmp_path, markers, engine, ray_session):
    configs = expand(GRID)[:2]
    options = ENGINE_OPTIONS[engine]()
    outcome = run_sweep(configs, str(tmp_path / "store"), engine=engine, progress=False, retries=1,
                        run=sweep_helpers.always_die, **options)
    assert len(outcome["failures"]) == 2 and all("died 2 times" in why for _, why in outcome["failures"])
    assert all(open(markers / config_hash(c)).read() == "xx" for c in configs)  # one try + one retry each
    outcome = run_sweep(configs, str(tmp_path / "store"), engine=engine, progress=False, retries=3,
                        run=sweep_helpers.raise_error, **options)
    assert len(outcome["failures"]) == 2 and all("deliberate failure" in why for _, why in outcome["failures"])
    assert ResultStore(tmp_path / "store").records() == []


def test_engines_store_identical_results(tmp_path, ray_session):
    """The engine does not change a run: local and Ray records of one grid have equal test errors."""
    pytest.importorskip("ray")
    configs = expand(GRID)
    for engine in ("local", "ray"):
        run_sweep(configs, str(tmp_path / engine), engine=engine, progress=False, workers=2)
    errors = {engine: {r["hash"]: r["test_error"] for r in ResultStore(tmp_path / engine).records()}
              for engine in ("local", "ray")}
    assert errors["local"] == errors["ray"] and len(errors["local"]) == len(configs)
