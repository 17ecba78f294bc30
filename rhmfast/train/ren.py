"""The algorithm of Ren, Dandi, Krzakala, Lee (2026), stage by stage: fresh samples per level, the first
patch only, closed-form (or gradient-descent) ridge regression onto the one-hot label."""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rhmfast.models import RenLayerwiseLearner, device_of
from rhmfast.models.observables import first_patch_diagnostics
from rhmfast.models.ren import KERNEL_CHUNK, rbf_kernel
from rhmfast.train.loop import check_budget, check_fits, test_error
from rhmfast.train.record import RunRecord, finish, grammar_config

# Kernel ridge regression solves exactly up to this many distinct first patches (at 20,000: 53 s and a peak
# of 9.2 GiB, measured on the 2-core EPYC), and by the Nyström approximation with NYSTROM_CENTERS above.
KERNEL_MAX_POINTS = 20_000
NYSTROM_CENTERS = 4096


def ren_stage_sizes(grammar, scale) -> dict[int, int]:
    """N^(l) = ceil(scale * m^l) fresh samples for stage l (Ren et al. 2026). scale: a float, or a
    fractions.Fraction for an exact ceiling (run configs pass P / sum_l m^l so)."""
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"rhmfast: scale must be finite and > 0, got {scale!r}")
    return {l: math.ceil(scale * grammar.m**l) for l in range(grammar.L, 0, -1)}


def fit_ridge(x: torch.Tensor, y: torch.Tensor, n_classes: int, lam: float, *, steps: int = 0,
              lr: float = 1.0) -> torch.Tensor:
    """argmin_W ½ mean‖e_y − W x‖² + (λ/2)‖W‖² for features x [N, D] (float64): closed form
    W = (Eᵀx/N)(xᵀx/N + λI)^-1 when steps == 0, else `steps` of gradient descent from W = 0."""
    targets = F.one_hot(y.long(), n_classes).to(x.dtype)
    n, dim = x.shape
    gram = x.t() @ x / n
    cross = targets.t() @ x / n
    if steps == 0:
        return torch.linalg.solve(gram + lam * torch.eye(dim, dtype=x.dtype, device=x.device), cross.t()).t()
    w = torch.zeros(n_classes, dim, dtype=x.dtype, device=x.device)
    for _ in range(steps):
        w -= lr * (w @ gram - cross + lam * w)
    return w


def fit_kernel_ridge(x: torch.Tensor, y: torch.Tensor, n_classes: int, lam: float, sigma: float, *,
                     max_points: int = KERNEL_MAX_POINTS, n_centers: int = NYSTROM_CENTERS,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Kernel ridge regression with the RBF kernel of bandwidth sigma: the M → ∞ limit of fit_ridge on random
    Fourier features, argmin_f ½ mean‖e_y − f(x)‖² + (λ/2)‖f‖² over the kernel's function space.

    Equal rows of x [N, d] are one point c with its count n_c and label sum S_c, which leaves the solution
    unchanged and keeps the system small (the input level has at most v^s distinct patches): with the
    D distinct rows, f(x) = k(x, rows) β, (C K + NλI) β = S, solved as the symmetric system
    (C^½ K C^½ + NλI) γ = C^-½ S, β = C^½ γ, by Cholesky. Memory about 3·8·D² bytes at the peak (the kernel
    matrix, its factor and a temporary: 9.2 GiB measured at D = 20,000), time D³/3 multiply-adds (53 s there
    on 2 cores). Above max_points distinct rows, the Nyström approximation with n_centers of them,
    drawn at random from seed: f(x) = k(x, centres) β, (K_cD C K_Dc + Nλ K_cc) β = K_cD S, accumulated in
    chunks (memory 8·n_centers² bytes per matrix, time D·n_centers² multiply-adds).

    Returns (centres [D or n_centers, d], W = βᵀ [n_classes, D or n_centers], dict(kernel_points=D,
    kernel_solver="exact" or "nystrom"))."""
    if not lam > 0:
        raise ValueError(f"rhmfast: lam must be > 0 for kernel features (the kernel matrix is ill-conditioned), "
                         f"got {lam!r}")
    rows, inverse, counts = torch.unique(x, dim=0, return_inverse=True, return_counts=True)
    sums = torch.zeros(rows.shape[0], n_classes, dtype=x.dtype, device=x.device)
    sums.index_add_(0, inverse, F.one_hot(y.long(), n_classes).to(x.dtype))
    n, n_rows = x.shape[0], rows.shape[0]
    if n_rows <= max_points:
        root = counts.to(x.dtype).sqrt()
        system = rbf_kernel(rows, rows, sigma).mul_(root[:, None]).mul_(root[None, :])
        system.diagonal().add_(n * lam)
        factor = torch.linalg.cholesky(system)
        del system
        beta = root[:, None] * torch.cholesky_solve(sums / root[:, None], factor)
        return rows, beta.t().contiguous(), dict(kernel_points=n_rows, kernel_solver="exact")
    gen = torch.Generator().manual_seed(seed)
    centers = rows[torch.randperm(n_rows, generator=gen)[:n_centers].to(x.device)]
    system = rbf_kernel(centers, centers, sigma).mul_(n * lam)
    system.diagonal().add_(1e-10 * n * lam)  # K_cc is positive definite in theory, not always in float64
    right = torch.zeros(centers.shape[0], n_classes, dtype=x.dtype, device=x.device)
    step = max(1, KERNEL_CHUNK // centers.shape[0])
    for start in range(0, n_rows, step):
        k = rbf_kernel(rows[start:start + step], centers, sigma)  # [chunk, centres]
        system.addmm_(k.t(), k * counts[start:start + step, None].to(x.dtype))
        right.addmm_(k.t(), sums[start:start + step])
    beta = torch.cholesky_solve(right, torch.linalg.cholesky(system))
    return centers, beta.t().contiguous(), dict(kernel_points=n_rows, kernel_solver="nystrom")


def train_ren_layerwise(learner: RenLayerwiseLearner, grammar, scale: float = 1.0, *, n_test: int = 4096,
                        lam: float | None = None, gd_steps: int = 0, gd_lr: float = 1.0, seed_data: int = 0,
                        n_diagnostic: int = 4096, progress: bool = True) -> RunRecord:
    """Ren et al.'s layerwise algorithm (2026): for l = L, ..., 1, draw N^(l) = ceil(scale*m^l) fresh
    samples, run the frozen levels below, take the first level-l patch and fit W^(l)
    by ridge regression onto the one-hot label, λ = 1/(v·m) by default (closed form, or gd_steps of
    gradient descent from W = 0; kernel features: the dual form, ``fit_kernel_ridge``). Before the fit, the
    learner measures the clusters of the stage's level-l embeddings (``fit_geometry``), which set its cluster
    centres and, with sigma="auto", its bandwidth.

    Each stage records its sample size, the measured geometry of its input embeddings (rho_tilde: the
    smallest distance between clusters, eps_S: the largest within one, n_clusters, n_distinct, gap, sigma
    where used), the number of distinct exact posteriors among the level-l symbols those clusters should
    find (n_posteriors), and, on n_diagnostic samples independent of the training ones, the mean distance
    ‖h − q^(l)‖₂ between its normalised output on the first patch and the exact label posterior
    (posterior_distance) and the fraction of outputs nearest to their own parent's posterior (purity).
    Test, training and diagnostic samples are disjoint index ranges of the iid stream seed_data. An
    interrupted run keeps its finished stages and has no test error. Data is generated on the device of the
    learner's parameters.
    """
    check_fits(learner, grammar, "learner")
    check_budget(n_test=n_test, n_diagnostic=n_diagnostic)
    if gd_steps < 0:
        raise ValueError(f"rhmfast: gd_steps must be >= 0, got {gd_steps}")
    if gd_steps and "kernel" in learner.level_features.values():
        raise ValueError("rhmfast: gd_steps must be 0 for kernel features (their ridge regression is solved in "
                         "closed form)")
    lam = 1.0 / (grammar.v * grammar.m) if lam is None else lam
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"rhmfast: lam must be finite and >= 0, got {lam!r}")
    sizes = ren_stage_sizes(grammar, scale)
    record = RunRecord("train_ren_layerwise", dict(model="RenLayerwiseLearner", **grammar_config(grammar),
                                                   scale=float(scale), stage_sizes=list(sizes.values()), n_test=n_test,
                                                   lam=lam, gd_steps=gd_steps, features=learner.features,
                                                   sigma="auto" if learner.auto_sigma else learner.sigmas.tolist(),
                                                   n_diagnostic=n_diagnostic),
                       dict(rules=grammar.seed, data=seed_data, model=learner.seed))
    # Everything comes from the iid stream seed_data, in disjoint index ranges: the test set first, then
    # each stage's training samples and its diagnostic samples. Different seed_data never share samples.
    device = device_of(learner)
    x_test, y_test = grammar.sample(n_test, seed=seed_data, device=device)
    position = n_test
    started = time.perf_counter()
    s, L = grammar.s, grammar.L
    try:
        with tqdm(range(L, 0, -1), desc=f"ren scale={float(scale):g}", disable=not progress, leave=False) as bar:
            for l in bar:
                n = sizes[l]
                x, y = grammar.sample(n, seed=seed_data, start=position, device=device)
                width = s ** (L - l + 1)  # tokens under the first level-l patch
                with torch.no_grad():
                    h = learner.embeddings(x[:, :width], down_to=l)[-1]  # [n, s, e]: the first patch
                    stage = dict(level=l, n_samples=n, **learner.fit_geometry(l, h),
                                 n_posteriors=_distinct_posteriors(grammar, l))
                    if learner.level_features[l] == "kernel":
                        centers, w, solved = fit_kernel_ridge(h.flatten(1), y, grammar.n_classes, lam,
                                                              learner.sigma(l), seed=seed_data)
                        learner.set_kernel_centers(l, centers)
                        stage.update(solved)
                    else:
                        w = fit_ridge(learner.patch_features(l, h)[:, 0], y, grammar.n_classes, lam, steps=gd_steps,
                                      lr=gd_lr)
                if not torch.isfinite(w).all():  # gradient descent with too large a step, say
                    record.stopped_by = "diverged"
                    break
                learner.set_weights(l, w)
                stage.update(first_patch_diagnostics(learner, grammar, l, n=n_diagnostic, seed=seed_data,
                                                     start=position + n))
                position += n + n_diagnostic
                record.samples_seen += n  # counted with its stage, so an interrupted record adds up
                record.stages.append(stage)
    except KeyboardInterrupt:
        record.interrupted, record.stopped_by = True, "interrupted"
    if not record.interrupted and record.stopped_by != "diverged":
        record.stopped_by = "done"
        record.final_test_error = test_error(learner, x_test, y_test)
        record.curve.append(dict(stage=1, samples_seen=record.samples_seen, test_error=record.final_test_error))
    return finish(record, started)


def _distinct_posteriors(grammar, level: int) -> int:
    """How many clusters the level-``level`` embeddings should form: the tokens (v) at the input level; above
    it, the distinct exact label posteriors q^(level+1) among the level's symbols that can stand first (the
    embeddings of one symbol all approach its posterior)."""
    if level == grammar.L:
        return grammar.v
    posterior = grammar.exact.label_posterior(level + 1)[:, 0]  # one row per level-`level` parent
    posterior = posterior[~posterior.isnan().any(1)]
    return int(torch.unique((posterior * 1e9).round(), dim=0).shape[0])
