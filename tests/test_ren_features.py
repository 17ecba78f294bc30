"""Ren et al.'s learner at its theory: kernel features (the M → ∞ limit of random Fourier features, exact and
Nyström), cluster features (Construction 2), the measured bandwidth schedule (sigma="auto"), the per-stage
diagnostics, and the study's smallest setting."""
from __future__ import annotations

import math
import os

import pytest
import torch

import rhmfast
from rhmfast.models import RenLayerwiseLearner, synonym_purity
from rhmfast.models.ren import cluster_embeddings, rbf_kernel, sigma_from_gap
from rhmfast.studies.grid import sweep_configs
from rhmfast.studies.runs import complete_config, learner_name, run_config
from rhmfast.train import fit_kernel_ridge, fit_ridge, train_ren_layerwise

STUDY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "sweeps", "ren.toml")


def _patches(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n patches of two 3-dimensional probability vectors (level-1 embeddings of a learner with n_classes = 3)
    and labels that depend on them."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.softmax(2 * torch.randn(n, 2, 3, generator=gen, dtype=torch.float64), dim=-1)
    return h, (h[:, 0].argmax(1) + h[:, 1].argmax(1)) % 3


def test_kernel_ridge_is_the_limit_of_random_fourier_features():
    h, y = _patches(200, seed=1)
    h_test, _ = _patches(50, seed=2)
    sigma, lam = 0.6, 1e-2
    centers, w, info = fit_kernel_ridge(h.flatten(1), y, 3, lam, sigma)
    assert info == dict(kernel_points=200, kernel_solver="exact")
    exact = rbf_kernel(h_test.flatten(1), centers, sigma) @ w.t()
    gaps = []
    for m in (16, 256, 4096):
        learner = RenLayerwiseLearner(4, 2, 2, n_classes=3, features="rff", n_features=m, sigma=sigma, seed=0)
        features = learner.patch_features(1, h)[:, 0]
        w_rff = fit_ridge(features, y, 3, lam)
        gaps.append((learner.patch_features(1, h_test)[:, 0] @ w_rff.t() - exact).abs().max().item())
    assert gaps[2] < gaps[1] < gaps[0] and gaps[2] < 0.05, gaps


def test_kernel_ridge_on_repeated_rows_equals_the_full_system():
    """Equal rows become one point with a count: the same function as the N x N system on every row."""
    h, y = _patches(40, seed=3)
    x = torch.cat([h.flatten(1)] * 3 + [h[:7].flatten(1)])
    y = torch.cat([y] * 3 + [torch.tensor([0, 1, 2, 0, 1, 2, 0])])
    sigma, lam, n = 0.5, 1e-3, x.shape[0]
    centers, w, info = fit_kernel_ridge(x, y, 3, lam, sigma)
    assert info["kernel_points"] == 40
    full = torch.linalg.solve(rbf_kernel(x, x, sigma) + n * lam * torch.eye(n, dtype=x.dtype),
                              torch.nn.functional.one_hot(y, 3).double())
    probe = _patches(30, seed=4)[0].flatten(1)
    torch.testing.assert_close(rbf_kernel(probe, centers, sigma) @ w.t(), rbf_kernel(probe, x, sigma) @ full,
                               rtol=1e-7, atol=1e-9)


def test_nystrom_with_every_point_as_centre_is_exact_and_with_fewer_close():
    h, y = _patches(300, seed=5)
    x, probe = h.flatten(1), _patches(40, seed=6)[0].flatten(1)
    sigma, lam = 0.6, 1e-2
    c0, w0, _ = fit_kernel_ridge(x, y, 3, lam, sigma)
    c1, w1, info = fit_kernel_ridge(x, y, 3, lam, sigma, max_points=100, n_centers=1000)
    assert info == dict(kernel_points=300, kernel_solver="nystrom") and c1.shape[0] == 300
    exact = rbf_kernel(probe, c0, sigma) @ w0.t()
    torch.testing.assert_close(rbf_kernel(probe, c1, sigma) @ w1.t(), exact, rtol=1e-5, atol=1e-6)
    c2, w2, _ = fit_kernel_ridge(x, y, 3, lam, sigma, max_points=100, n_centers=150)
    assert c2.shape[0] == 150 and (rbf_kernel(probe, c2, sigma) @ w2.t() - exact).abs().max() < 0.05


def test_kernel_ridge_refuses_no_penalty():
    h, y = _patches(10, seed=0)
    with pytest.raises(ValueError, match="lam must be > 0"):
        fit_kernel_ridge(h.flatten(1), y, 3, 0.0, 1.0)


def test_clusters_of_separated_blobs():
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(5, dtype=torch.float64)  # pairwise distance sqrt(2)
    h = (centres.repeat(60, 1) + 0.01 * torch.randn(300, 5, generator=gen, dtype=torch.float64))
    found = cluster_embeddings(h, max_clusters=8)
    assert found["n_clusters"] == 5 and found["n_distinct"] == 300
    assert found["eps_S"] < 0.1 < 1.3 < found["rho"] <= found["rho_centroids"] < 1.5
    assert sorted(found["centroids"].argmax(1).tolist()) == list(range(5))
    tokens = cluster_embeddings(torch.eye(4, dtype=torch.float64)[[0, 1, 1, 3, 0]], max_clusters=4)
    assert tokens["n_clusters"] == 3 and tokens["eps_S"] == 0 and tokens["rho"] == pytest.approx(math.sqrt(2))


@pytest.mark.parametrize("features", ["cluster", "kernel", "tensor+kernel"])
def test_theory_features_recover_the_synonym_classes_of_a_well_separated_grammar(features):
    """First-token-uniform (m, L) = (4, 3), v = 8, rules seed 1 (Assumption 6 holds: K_rho >= 1): with 64 n_c m^L
    samples every stage finds the v symbols of its level, its outputs lie nearest their own posteriors, and
    the test error is zero."""
    g = rhmfast.RHM(8, 4, 2, 3, seed=1, rules="first-token-uniform")
    assert g.exact.satisfies_assumption()
    learner = RenLayerwiseLearner(8, 2, 3, features=features, sigma="auto", seed=0)
    record = train_ren_layerwise(learner, g, 64 * 8 * 4**3 / (4 + 16 + 64), n_test=1024, n_diagnostic=512,
                                 progress=False)
    assert record.final_test_error == 0.0
    for stage in record.stages:
        assert stage["n_clusters"] == stage["n_posteriors"] == 8, stage
        # The kernel's ridge penalty shrinks the input stage's outputs towards each other: a few land nearer a
        # neighbour's posterior there, harmlessly (the test error is zero).
        assert stage["purity"] >= (0.9 if features == "kernel" and stage["level"] == 3 else 1.0), stage
        assert stage["posterior_distance"] < 0.15, stage
        assert 0 < stage["rho_tilde"] <= stage["rho_centroids"] and stage["eps_S"] >= 0, stage
    assert record.stages[0]["rho_tilde"] == pytest.approx(math.sqrt(2))  # one-hot tokens
    kernel_levels = {"kernel": [3, 2, 1], "tensor+kernel": [2, 1], "cluster": []}[features]
    assert [lvl for lvl, kind in learner.level_features.items() if kind == "kernel"] == sorted(kernel_levels)
    for st in record.stages:
        if st["level"] in kernel_levels:
            assert st["sigma"] == pytest.approx(sigma_from_gap(st["rho_centroids"], 0.01))
            assert st["kernel_solver"] == "exact"


def test_auto_bandwidth_is_deterministic_and_a_trained_learner_reloads():
    g = rhmfast.RHM(8, 3, 2, 3, seed=1, rules="first-token-uniform")
    runs = []
    for _ in range(2):
        learner = RenLayerwiseLearner(8, 2, 3, features="kernel", sigma="auto", seed=2)
        runs.append((train_ren_layerwise(learner, g, 40.0, n_test=256, n_diagnostic=256, progress=False), learner))
    assert runs[0][0].stages == runs[1][0].stages and torch.equal(runs[0][1].sigmas, runs[1][1].sigmas)
    x, _ = g.sample(64, seed=9)
    for features, trained in (("kernel", runs[0][1]), ("cluster", None)):
        if trained is None:
            trained = RenLayerwiseLearner(8, 2, 3, features=features, seed=0)
            train_ren_layerwise(trained, g, 40.0, n_test=256, n_diagnostic=256, progress=False)
        fresh = RenLayerwiseLearner(8, 2, 3, features=features, sigma="auto" if features == "kernel" else 1.0, seed=0)
        fresh.load_state_dict(trained.state_dict())
        assert torch.equal(fresh(x), trained(x))


def test_untrained_measured_levels_answer_zero_and_auto_bandwidth_says_it_is_unset():
    x, _ = rhmfast.RHM(8, 2, 2, 2, seed=0).sample(4, seed=0)
    for features in ("kernel", "cluster"):
        learner = RenLayerwiseLearner(8, 2, 2, features=features, sigma=1.0)
        assert torch.equal(learner(x), torch.zeros(4, 8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="not measured yet"):
        RenLayerwiseLearner(8, 2, 2, features="rff", sigma="auto")(x)


def test_bad_arguments_name_the_parameter():
    g = rhmfast.RHM(8, 2, 2, 2, seed=0)
    with pytest.raises(ValueError, match="sigma must be"):
        RenLayerwiseLearner(8, 2, 2, features="rff", sigma="wide")
    with pytest.raises(ValueError, match="sigma_eps"):
        RenLayerwiseLearner(8, 2, 2, sigma_eps=1.5)
    with pytest.raises(ValueError, match="gd_steps must be 0 for kernel"):
        train_ren_layerwise(RenLayerwiseLearner(8, 2, 2, features="kernel"), g, 4.0, gd_steps=5, progress=False)
    with pytest.raises(ValueError, match="ren_sigma must be a number > 0 or 'auto'"):
        complete_config(dict(P=10, model="ren", ren_feature_kind="kernel", ren_sigma="wide"))


def test_run_configs_of_the_new_features():
    """Parameters a feature map ignores are None (one name per run); the learners are told apart by name."""
    kernel = complete_config(dict(P=10, model="ren", ren_feature_kind="kernel", ren_sigma="auto"))
    assert kernel["ren_features"] is None and kernel["ren_sigma"] == "auto"
    cluster = complete_config(dict(P=10, model="ren", ren_feature_kind="cluster", ren_sigma=0.5))
    assert cluster["ren_features"] is None and cluster["ren_sigma"] is None
    assert [learner_name(c) for c in (kernel, cluster, dict(P=10, model="ren"))] == ["ren-kernel", "ren-cluster", "ren"]


def test_synonym_purity_of_an_untrained_and_a_trained_stage():
    g = rhmfast.RHM(8, 4, 2, 2, seed=1, rules="first-token-uniform")
    learner = RenLayerwiseLearner(8, 2, 2, features="tensor")
    train_ren_layerwise(learner, g, 400.0, n_test=64, n_diagnostic=64, progress=False)
    assert synonym_purity(learner, g, 2, n=512, seed=5) == 1.0
    learner.set_weights(2, torch.rand(8, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    assert synonym_purity(learner, g, 2, n=512, seed=5) < 0.5


def test_the_studys_smallest_setting():
    """The committed study (benchmarks/sweeps/ren.toml) at its smallest first-token-uniform setting and its
    largest P: the kernel and cluster learners reach the goal (test error below 0.1)."""
    configs = [c for c in sweep_configs({}, STUDY) if c["model"] == "ren" and c["rules"] == "first-token-uniform"
               and c["seed_sample"] == 0 and c["ren_feature_kind"] in ("kernel", "cluster")]
    smallest = min(c["m"] ** c["L"] for c in configs)
    configs = [c for c in configs if c["m"] ** c["L"] == smallest]
    largest = max(c["P"] for c in configs)
    for config in (c for c in configs if c["P"] == largest):
        assert config["require"] == "assumption6"
        assert run_config({**config, "n_test": 512}).final_test_error < 0.1, config
