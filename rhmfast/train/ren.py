"""The algorithm of Ren, Dandi, Krzakala, Lee (2026), stage by stage: fresh samples per level, the first
patch only, closed-form (or gradient-descent) ridge regression onto the one-hot label."""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rhmfast.models import RenLayerwiseLearner, device_of
from rhmfast.models.observables import posterior_distance
from rhmfast.train.loop import check_budget, check_fits, test_error
from rhmfast.train.record import RunRecord, finish, grammar_config


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


def train_ren_layerwise(learner: RenLayerwiseLearner, grammar, scale: float = 1.0, *, n_test: int = 4096,
                        lam: float | None = None, gd_steps: int = 0, gd_lr: float = 1.0, seed_data: int = 0,
                        n_diagnostic: int = 4096, progress: bool = True) -> RunRecord:
    """Ren et al.'s layerwise algorithm (2026): for l = L, ..., 1, draw N^(l) = ceil(scale*m^l) fresh
    samples, run the frozen levels below, take the first level-l patch and fit W^(l)
    by ridge regression onto the one-hot label, λ = 1/(v·m) by default (closed form, or gd_steps of
    gradient descent from W = 0). Each stage records its sample size and the mean distance ‖h − q^(l)‖₂
    between its normalised output on the first patch and the exact label posterior, on n_diagnostic
    samples independent of the training ones. Test, training and diagnostic samples are disjoint index
    ranges of the iid stream seed_data. An interrupted run keeps its finished stages and has no test error.
    Data is generated on the device of the learner's parameters.
    """
    check_fits(learner, grammar, "learner")
    check_budget(n_test=n_test, n_diagnostic=n_diagnostic)
    if gd_steps < 0:
        raise ValueError(f"rhmfast: gd_steps must be >= 0, got {gd_steps}")
    lam = 1.0 / (grammar.v * grammar.m) if lam is None else lam
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"rhmfast: lam must be finite and >= 0, got {lam!r}")
    sizes = ren_stage_sizes(grammar, scale)
    record = RunRecord("train_ren_layerwise", dict(model="RenLayerwiseLearner", **grammar_config(grammar),
                                                   scale=float(scale), stage_sizes=list(sizes.values()), n_test=n_test,
                                                   lam=lam, gd_steps=gd_steps, features=learner.features,
                                                   sigma=learner.sigmas, n_diagnostic=n_diagnostic),
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
                    h = learner.embeddings(x[:, :width], down_to=l)[-1]
                    features = learner.patch_features(l, h)[:, 0]
                    w = fit_ridge(features, y, grammar.n_classes, lam, steps=gd_steps, lr=gd_lr)
                if not torch.isfinite(w).all():  # gradient descent with too large a step, say
                    record.stopped_by = "diverged"
                    break
                learner.W[l - 1].copy_(w)
                distance = posterior_distance(learner, grammar, l, n=n_diagnostic, seed=seed_data, start=position + n)
                position += n + n_diagnostic
                record.samples_seen += n  # counted with its stage, so an interrupted record adds up
                record.stages.append(dict(level=l, n_samples=n, posterior_distance=distance))
    except KeyboardInterrupt:
        record.interrupted, record.stopped_by = True, "interrupted"
    if not record.interrupted and record.stopped_by != "diverged":
        record.stopped_by = "done"
        record.final_test_error = test_error(learner, x_test, y_test)
        record.curve.append(dict(stage=1, samples_seen=record.samples_seen, test_error=record.final_test_error))
    return finish(record, started)
