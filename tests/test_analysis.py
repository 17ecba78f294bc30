"""P* estimation on synthetic curves with known answers, its bootstrap interval, thresholds, the scaling fit
of P* against n_c m^L, plots and the report of a sweep."""
import csv
import math

import numpy as np
import pytest

from rhmfast.studies import crossing, estimate_pstar, fit_scaling, plot_curves, pstar_table, threshold, write_report


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


# ---------------------------------------------------------------------------------------------------------------
# Sweep rows: synthetic curves exactly linear in log P, so that P* is known in closed form. Each seed's error is
# EPS - SLOPE * log(P / p_seed); the mean over seeds is EPS - SLOPE * log(P / G) with G the geometric mean of the
# seeds' p_seed, so the interpolated crossing of the mean curve is G wherever it falls between grid points.

EPS, SLOPE, FACTORS = 0.1, 0.02, (0.125, 0.25, 0.5, 1, 2, 4, 8)


def _runs(learner, m, L, pstar, offsets, *, v=8, n_classes=8, s=2, eps=EPS, factors=FACTORS, n_test=1000):
    """Rows of one setting: seed i crosses eps at pstar * exp(offsets[i]); grid P = round(f * pstar)."""
    return [dict(learner=learner, v=v, n_classes=n_classes, s=s, m=m, L=L, P=round(f * pstar), seed=seed,
                 test_error=eps - SLOPE * math.log(round(f * pstar) / (pstar * math.exp(offset))), n_test=n_test)
            for seed, offset in enumerate(offsets) for f in factors]


def _one(table, **key):
    (row,) = [r for r in table if all(r[k] == v for k, v in key.items())]
    return row


def test_crossing_skips_missing_points():
    log_mid = (math.log(10) + math.log(40)) / 2
    assert crossing([10, 20, 40], [0.5, np.nan, -0.3], 0.1) == pytest.approx(math.exp(log_mid))
    assert crossing([10, 20, 40], [np.nan, 0.05, 0.01], 0.1) == 20  # the first observed point is already below
    assert crossing([10, 20], [np.nan, np.nan], 0.1) == math.inf


def test_pstar_table_known_answers():
    rows = (_runs("hcnn", 2, 4, 1000.0, [-0.1, 0.0, 0.1])  # spread over seeds, geometric mean 1000
            + _runs("hcnn", 3, 3, 2000.0, [0.0, 0.0])  # seeds agree
            + _runs("hcnn", 4, 3, 100.0, [0.0, 0.0], factors=(2, 4))  # below eps from the first point on
            + [dict(r, test_error=0.5) for r in _runs("fc", 2, 4, 1000.0, [0.0, 0.0])]  # never below
            + _runs("ren", 2, 4, 500.0, [0.2, -0.2], n_classes=4, eps=0.075))  # rand/10 with n_c = 4: 0.075
    rows = [r for r in rows if not (r["learner"] == "hcnn" and r["m"] == 2 and r["seed"] == 2 and r["P"] == 8000)]
    table = pstar_table(rows, EPS, n_boot=300)
    assert [(r["learner"], r["m"]) for r in table] == [("hcnn", 2), ("hcnn", 3), ("hcnn", 4), ("fc", 2), ("ren", 2)]
    spread = _one(table, learner="hcnn", m=2)
    assert spread["pstar"] == pytest.approx(1000.0, rel=1e-9) and spread["reached"] and not spread["upper_bound"]
    assert spread["low"] < 1000.0 < spread["high"]
    assert spread["n_c_m_L"] == 128 and spread["ratio"] == pytest.approx(1000 / 128, rel=1e-9)
    assert spread["n_seeds"] == 3 and spread["grid"] == [125, 250, 500, 1000, 2000, 4000, 8000]
    assert spread["n_runs"] == [3] * 6 + [2]  # the missing run is left out of the mean, not counted as an error
    assert spread["mean_error"][-1] == pytest.approx(EPS - SLOPE * (math.log(8) + 0.05))
    agree = _one(table, learner="hcnn", m=3)
    assert agree["pstar"] == pytest.approx(2000.0, rel=1e-9) and agree["low"] == agree["high"] == agree["pstar"]
    early = _one(table, learner="hcnn", m=4)
    assert early["pstar"] == 200 and early["upper_bound"] and early["grid"] == [200, 400]
    never = _one(table, learner="fc")
    assert never["pstar"] == never["low"] == never["ratio"] == math.inf and not never["reached"]
    # the ren curves are built around 0.075: they cross 0.1 earlier, at 500 exp(-0.025 / SLOPE), and
    # rand/10 = (1 - 1/4) / 10 at their P*
    assert _one(table, learner="ren")["pstar"] == pytest.approx(500 * math.exp(-0.025 / SLOPE), rel=1e-9)
    ren = _one(pstar_table(rows, "rand/10", n_boot=50), learner="ren")
    assert ren["eps"] == 0.075 and ren["pstar"] == pytest.approx(500.0, rel=1e-9)


SETTINGS = ((2, 4), (3, 3), (4, 3), (3, 4))  # n_c m^L = 128, 216, 512, 648 with n_c = 8


@pytest.mark.parametrize("a, c", [(1.0, 2.0), (1.5, 0.3)])
def test_fit_scaling_recovers_a_known_slope(a, c):
    offsets = np.random.default_rng(0).normal(0, 0.05, size=(len(SETTINGS), 4))
    offsets -= offsets.mean(axis=1, keepdims=True)  # each setting's geometric mean is exactly c (n_c m^L)^a
    rows = [r for (m, L), o in zip(SETTINGS, offsets) for r in _runs("hcnn", m, L, c * (8 * m**L) ** a, o)]
    fit = fit_scaling(rows, EPS, learner="hcnn", n_boot=400)
    assert fit["slope"] == pytest.approx(a, rel=1e-9) and fit["prefactor"] == pytest.approx(c, rel=1e-7)
    assert fit["low"] < a < fit["high"] and fit["high"] - fit["low"] < 0.2
    assert (fit["n_settings"], fit["n_reached"], fit["n_boot_used"], fit["reason"]) == (4, 4, 400, "")
    assert [s["n_c_m_L"] for s in fit["settings"]] == [128, 216, 512, 648]


def test_fit_scaling_interval_collapses_when_seeds_agree():
    rows = [r for m, L in SETTINGS[:3] for r in _runs("ren", m, L, 3.0 * 8 * m**L, [0.0, 0.0, 0.0])]
    fit = fit_scaling(rows, EPS, learner="ren", n_boot=100)
    assert fit["slope"] == pytest.approx(1.0, rel=1e-9)
    assert fit["low"] == pytest.approx(fit["slope"], abs=1e-12)
    assert fit["high"] == pytest.approx(fit["slope"], abs=1e-12)


def test_fit_scaling_without_two_reached_settings():
    reached = _runs("fc", 2, 4, 1000.0, [0.0, 0.0])
    never = [dict(r, test_error=0.4) for r in _runs("fc", 3, 3, 1000.0, [0.0, 0.0])]
    fit = fit_scaling(reached + never, EPS, learner="fc", n_boot=50)
    assert math.isnan(fit["slope"]) and math.isnan(fit["low"]) and fit["n_boot_used"] == 0
    assert fit["reason"] == "1 of 2 settings reach P*; a fit needs 2" and fit["n_reached"] == 1
    assert fit["settings"][1]["pstar"] == math.inf
    same_size = reached + _runs("fc", 2, 4, 1000.0, [0.0, 0.0], s=3)  # two settings, one n_c m^L
    assert "share one n_c m^L" in fit_scaling(same_size, EPS, learner="fc", n_boot=50)["reason"]


def test_fit_scaling_drops_resamples_with_fewer_than_two_settings():
    # seed 0 of the second setting crosses eps, seed 1 (0.12 throughout) never does, their mean does: a resample
    # that draws seed 1 twice (about a quarter of them) leaves one setting, and is dropped
    fragile = _runs("hcnn", 3, 3, 1000.0, [0.0, 0.0])
    fragile = [dict(r, test_error=0.12 if r["seed"] else r["test_error"] - 0.05) for r in fragile]
    fit = fit_scaling(_runs("hcnn", 2, 4, 500.0, [0.0, 0.0]) + fragile, EPS, learner="hcnn", n_boot=400)
    assert math.isfinite(fit["slope"]) and fit["n_reached"] == 2
    assert 0.6 * 400 < fit["n_boot_used"] < 0.9 * 400


def test_malformed_rows_raise():
    good = _runs("hcnn", 2, 4, 1000.0, [0.0])
    with pytest.raises(ValueError, match=r"row 0 lacks the keys \['n_test'\]"):
        pstar_table([{k: v for k, v in good[0].items() if k != "n_test"}], EPS)
    with pytest.raises(ValueError, match="row 1: test_error"):
        pstar_table([good[0], dict(good[1], test_error=1.5)], EPS)
    with pytest.raises(ValueError, match="row 0: P must be an integer"):
        pstar_table([dict(good[0], P=100.5)], EPS)
    with pytest.raises(ValueError, match="row 7 repeats the run of row 0 with another result"):
        pstar_table(good + [dict(good[0], test_error=good[0]["test_error"] + 0.25)], EPS)
    # The same run twice (two Ren configs whose stage sizes round to the same P) counts once.
    assert pstar_table(good + good[:1], EPS) == pstar_table(good, EPS)
    with pytest.raises(ValueError, match="no runs of learner 'ren'"):
        fit_scaling(good, EPS, learner="ren")
    with pytest.raises(ValueError, match="eps"):
        pstar_table(good, 2.0)


def test_report_of_a_learner_whose_every_run_diverged(tmp_path):
    """Diverged runs have no test error (NaN: missing); a learner with nothing else gets an empty panel and
    an unreached P*, and the report is written."""
    rows = _runs("hcnn", 2, 4, 300.0, [0.0]) + [dict(r, test_error=math.nan) for r in _runs("fc", 2, 4, 300.0, [0.0])]
    paths = write_report(rows, str(tmp_path / "report"), EPS, n_boot=50)
    table = {r["learner"]: r for r in csv.DictReader(open(paths["pstar.csv"]))}
    assert table["fc"]["reached"] == "False" and table["hcnn"]["reached"] == "True"
    assert open(paths["test_error_vs_P.png"], "rb").read()[:4] == b"\x89PNG"


def test_write_report_writes_every_file(tmp_path):
    rows = [r for m, L in SETTINGS[:3] for r in _runs("hcnn", m, L, 2.0 * 8 * m**L, [-0.05, 0.05])]
    rows[-1]["test_error"] = 0.0  # hcnn m=4 L=3, seed 1, largest P (past P*): floored at 1/n_test on the plots
    rows += [dict(r, test_error=0.6) for r in _runs("fc", 2, 4, 1000.0, [0.0, 0.0])]
    paths = write_report(rows, str(tmp_path / "report"), EPS, n_boot=100, title="RHM v = 8, s = 2")
    figures = [f"{stem}.{ext}" for stem in ("test_error_vs_P", "test_error_vs_P_scaled", "pstar_vs_nc_mL")
               for ext in ("png", "pdf")]
    assert set(paths) == {"pstar.csv", "pstar.md", "curves.csv", "scaling.csv", *figures}
    for name in figures:
        data = open(paths[name], "rb").read()
        assert data[:4] == (b"\x89PNG" if name.endswith("png") else b"%PDF") and len(data) > 5000
    table = list(csv.DictReader(open(paths["pstar.csv"])))
    assert [(r["learner"], r["m"], r["L"]) for r in table] == [("hcnn", "2", "4"), ("hcnn", "3", "3"),
                                                              ("hcnn", "4", "3"), ("fc", "2", "4")]
    for r, (m, L) in zip(table, SETTINGS[:3]):
        assert float(r["pstar"]) == pytest.approx(2.0 * 8 * m**L, rel=1e-9) and r["reached"] == "True"
        assert float(r["ratio"]) == pytest.approx(2.0, rel=1e-9) and float(r["low"]) < float(r["pstar"])
        assert int(r["n_c_m_L"]) == 8 * m**L and r["n_seeds"] == "2" and r["grid"].split()[0] == str(round(2 * m**L))
    assert table[3]["pstar"] == "inf" and table[3]["reached"] == "False"
    curves = list(csv.DictReader(open(paths["curves.csv"])))
    assert len(curves) == 4 * len(FACTORS)
    assert (curves[-1]["learner"], curves[-1]["P"], curves[-1]["mean_error"]) == ("fc", "8000", "0.6")
    last = curves[3 * len(FACTORS) - 1]
    assert (last["learner"], last["m"], last["P"], last["n_runs"]) == ("hcnn", "4", str(round(8 * 2 * 512)), "2")
    other = EPS - SLOPE * (math.log(8) + 0.05)  # seed 0 at its largest P
    assert float(last["min_error"]) == 0.0 and float(last["max_error"]) == pytest.approx(other, rel=1e-12)
    assert float(last["mean_error"]) == pytest.approx(other / 2, rel=1e-12)
    first = curves[0]  # hcnn m=2 L=4 at P = 32: seeds at log offsets -0.05 and 0.05 average out
    assert float(first["mean_error"]) == pytest.approx(EPS + SLOPE * math.log(256 / 32), rel=1e-9)
    fit = list(csv.DictReader(open(paths["scaling.csv"])))
    assert float(fit[0]["slope"]) == pytest.approx(1.0, rel=1e-9) and fit[1]["slope"] == "nan"
    markdown = open(paths["pstar.md"]).read()
    for m, L in SETTINGS[:3]:
        assert f"| hCNN (SGD) | 8 | {m} | {L} | {8 * m**L} | 2 | {2 * 8 * m**L} |" in markdown
    assert "| fully connected | 8 | 2 | 4 | 128 | 2 | inf | [inf, inf] | inf |" in markdown
    assert "| hCNN (SGD) | 3 of 3 | 1.000 |" in markdown and "not fitted: 0 of 1 settings reach P*" in markdown
