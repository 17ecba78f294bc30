"""P* estimation on synthetic curves with known answers, its bootstrap interval, thresholds, plots."""
import math

import numpy as np
import pytest

from rhmfast.analysis import crossing, estimate_pstar, plot_curves, threshold


def test_crossing_interpolates_in_log_p():
    ps = [100, 1000, 10000]
    assert crossing(ps, [0.5, 0.2, 0.05], 0.1) == pytest.approx(10 ** (3 + 2 / 3))
    # a curve linear in log P is recovered exactly wherever the threshold falls
    grid = np.geomspace(10, 1e5, 9)
    for pstar in (37.0, 1234.5, 5e4):
        errors = 0.1 - 0.05 * np.log(grid / pstar)
        assert crossing(grid, errors, 0.1) == pytest.approx(pstar, rel=1e-12)


def test_crossing_edges():
    assert crossing([10, 20], [0.05, 0.01], 0.1) == 10  # already below at the first point
    assert crossing([10, 20], [0.5, 0.3], 0.1) == math.inf  # never below
    assert crossing([10, 20, 40, 80], [0.5, 0.05, 0.3, 0.01], 0.1) < 20  # the first crossing counts
    with pytest.raises(ValueError, match="increasing"):
        crossing([20, 10], [0.5, 0.05], 0.1)
    with pytest.raises(ValueError, match="same"):
        crossing([10, 20], [0.5], 0.1)


def test_estimate_pstar_averages_seeds_and_bootstraps_over_them():
    ps = [100, 1000, 10000]
    same = estimate_pstar(ps, [[0.5, 0.2, 0.05]] * 4, 0.1)
    assert same["pstar"] == pytest.approx(10 ** (3 + 2 / 3)) and same["low"] == same["high"] == same["pstar"]
    assert same["reached"]
    spread = estimate_pstar(ps, [[0.5, 0.3, 0.05], [0.5, 0.05, 0.01], [0.5, 0.2, 0.0]], 0.1, n_boot=2000)
    assert spread["pstar"] == pytest.approx(crossing(ps, [0.5, 0.55 / 3, 0.02], 0.1))
    assert spread["low"] < spread["pstar"] < spread["high"]
    assert 100 < spread["low"] and spread["high"] <= 10000
    never = estimate_pstar(ps, [[0.5, 0.3, 0.2], [0.5, 0.4, 0.05]], 0.1)
    assert never["pstar"] == math.inf and not never["reached"] and never["high"] == math.inf
    with pytest.raises(ValueError, match="shape"):
        estimate_pstar(ps, [[0.5, 0.3]], 0.1)


def test_threshold():
    assert threshold(8) == 0.1
    assert threshold(8, "rand/10") == pytest.approx(0.0875)
    with pytest.raises(ValueError, match="eps"):
        threshold(8, 1.5)


def test_plot_curves_writes_pngs(tmp_path):
    curves = {"a": ([10, 100, 1000], [[0.8, 0.2, 0.0], [0.7, 0.1, 0.01]]), "b": ([20, 200], [[0.5, 0.05]])}
    for name, kw in (("plain.png", {}), ("scaled.png", dict(xscale={"a": 10, "b": 20}, xlabel="P / n"))):
        path = tmp_path / name
        plot_curves(curves, str(path), eps=0.1, floor=1e-3, **kw)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_missing_runs_are_left_out_of_the_mean():
    ps = [100, 1000, 10000]
    full = estimate_pstar(ps, [[0.5, 0.2, 0.05], [0.5, 0.2, 0.05]], 0.1)
    partial = estimate_pstar(ps, [[0.5, 0.2, 0.05], [0.5, np.nan, np.nan]], 0.1)
    assert partial["pstar"] == full["pstar"]
    # a bootstrap resample holding only the unfinished seed has no crossing: the interval opens upwards
    assert partial["low"] == full["low"] and partial["high"] == math.inf


def test_crossing_skips_missing_points():
    log_mid = (math.log(10) + math.log(40)) / 2
    assert crossing([10, 20, 40], [0.5, np.nan, -0.3], 0.1) == pytest.approx(math.exp(log_mid))
    assert crossing([10, 20, 40], [np.nan, 0.05, 0.01], 0.1) == 20  # the first observed point is already below
    assert crossing([10, 20], [np.nan, np.nan], 0.1) == math.inf
