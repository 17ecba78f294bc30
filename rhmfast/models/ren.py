"""The layerwise learner of Ren, Dandi, Krzakala, Lee (2026): frozen patch features, one trained linear
map per level, outputs normalised to sum one. Its trainer is ``rhmfast.train.ren``."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rhmfast._checks import check_choice, check_int, check_positive_int, check_real, check_seed, check_tokens

FEATURES = ("tensor", "rff", "tensor+rff", "kernel", "tensor+kernel", "cluster")
KERNEL_CHUNK = 1 << 22  # kernel entries evaluated at once: 32 MiB of float64


def rbf_kernel(a: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    """exp(−‖a_i − b_j‖² / 2σ²) for rows a [n, d] and b [k, d] -> [n, k] (the dtype of a)."""
    squared = (a.square().sum(1, keepdim=True) + b.square().sum(1) - 2.0 * a @ b.t()).clamp_min_(0.0)
    return squared.mul_(-0.5 / sigma**2).exp_()


def sigma_from_gap(rho: float, eps_output: float) -> float:
    """The bandwidth of a level from the measured minimal distance between its clusters: σ² = 2ρ̃²/log(2/ε_O)
    (the schedule of the paper's proof of Lemma 11). At distance ρ̃ the kernel is (ε_O/2)^(1/4); within a
    cluster (distances ≪ ρ̃) it stays near 1."""
    return rho * math.sqrt(2.0 / math.log(2.0 / eps_output))


def cluster_embeddings(h: torch.Tensor, max_clusters: int, *, max_points: int = 2048,
                       generator: torch.Generator | None = None) -> dict:
    """The clusters of embeddings h [n, e] (float64), their number decided by the gap between intra- and
    inter-cluster distances.

    Distinct rows are clustered by Ward's hierarchical clustering (at most max_points of them, a random subset
    drawn from generator when there are more); of the cuts into k = 2 .. max_clusters clusters, the one
    whose next merge would cost the largest multiple of the merge before it wins (the gap). Ward's criterion,
    not single linkage: embeddings learned from finite samples scatter, and single linkage chains
    neighbouring clusters through their stragglers (measured: it merged synonym classes of first-token-uniform
    grammars at 4–8 times the samples Ward needs). At most max_clusters distinct rows: each is its own
    cluster (one-hot tokens, or embeddings already equal within a synonym class).

    Returns dict(centroids [k, e], n_clusters, n_distinct, rho (the smallest distance between points of two
    clusters: ρ̃; inf for one cluster), rho_centroids (the smallest distance between two cluster centres),
    eps_S (the largest distance between points of one cluster: ε̃_S), gap (the merge-cost ratio of the chosen
    cut; inf when the clusters are single points))."""
    # Imported here: scipy.cluster costs 0.4 s at import, which every sweep worker and CLI start would pay.
    from scipy.cluster.hierarchy import cut_tree, linkage

    distinct = torch.unique(h, dim=0)
    n_distinct = distinct.shape[0]
    if n_distinct <= max_clusters:
        points, labels, k, gap = distinct, torch.arange(n_distinct, device=h.device), n_distinct, math.inf
    else:
        points = distinct
        if n_distinct > max_points:
            points = distinct[torch.randperm(n_distinct, generator=generator)[:max_points].to(h.device)]
        n = points.shape[0]
        tree = linkage(points.cpu().numpy(), method="ward")
        heights = tree[:, 2]  # ascending merge costs, n - 1 of them
        # Cutting into k clusters undoes the k - 1 costliest merges: compare the cheapest undone one with
        # the costliest kept one.
        ks = np.arange(2, min(max_clusters, n - 1) + 1)
        undone, kept = heights[n - ks], heights[n - ks - 1]
        with np.errstate(divide="ignore"):
            ratios = np.where(kept > 0, undone / np.maximum(kept, 1e-300), np.inf)
        best = int(np.argmax(ratios))  # ties: the fewest clusters
        k, gap = int(ks[best]), float(ratios[best])
        labels = torch.from_numpy(cut_tree(tree, n_clusters=k)[:, 0].astype(np.int64)).to(h.device)
    centroids = torch.stack([points[labels == c].mean(0) for c in range(k)])
    pairwise = torch.cdist(points, points)
    same = labels[:, None] == labels[None, :]
    rho = pairwise[~same].min().item() if k > 1 else math.inf
    apart = torch.pdist(centroids).min().item() if k > 1 else math.inf
    return dict(centroids=centroids, n_clusters=k, n_distinct=n_distinct, rho=rho, rho_centroids=apart,
                eps_S=pairwise[same].max().item(), gap=gap)


class RenLayerwiseLearner(nn.Module):
    """The layerwise learner of Ren et al. (2026), levels counted from the root (level L = tokens).

    Level l (L down to 1) maps each patch of s level-l embeddings to a level-(l-1) embedding
    h = W x / <1, W x>, x = Phi(h_1 ∘ ... ∘ h_s), with one W^(l) [n_classes, feature_dim] shared by the
    patches of the level. Embeddings are one-hot tokens at level L and n_classes-vectors above.

    features="tensor": x = h_1 ⊗ ... ⊗ h_s (exact at the input level, dimension e^s);
    features="rff": x = M^(-1/2) (cos(ω_j·h), sin(ω_j·h))_j, ω_j ~ N(0, σ^-2 I), frozen (dimension 2M);
    features="tensor+rff": the exact tensor product at the input level (level L), random Fourier features above;
    features="kernel": the M → ∞ limit of "rff": x = (k(h, c_i))_i, k the RBF kernel exp(−‖h − h′‖²/2σ²), at
    the distinct first patches c_i of the level's training samples (W is then the dual solution of the ridge
    regression; see ``rhmfast.train.ren.fit_kernel_ridge``); features="tensor+kernel": the exact tensor product at
    the input level, the kernel above (the M → ∞ limit of "tensor+rff": at the input level the kernel smooths
    across patches that share a token, which costs the patches that rarely stand first);
    features="cluster": the paper's Construction 2: each embedding is replaced by the one-hot of its
    nearest cluster centre (clusters measured on the level's training samples, at most v of them), then
    the tensor product over the patch; the input level is the tensor product of the one-hot tokens.

    sigma (rff and kernel): one bandwidth, one per level (index l-1 for level l), or "auto": per level, from
    the measured minimal distance ρ̃ between the cluster centres of the level's embeddings,
    σ² = 2ρ̃²/log(2/sigma_eps) (``sigma_from_gap``). Levels whose features or bandwidth are measured on data (kernel, cluster, auto)
    are set by the trainer through ``fit_geometry``, ``set_kernel_centers`` and ``set_weights``; their
    tensors are part of the state dict, which a fresh learner of the same arguments loads.

    The normaliser <1, W x> is guarded: where |<1, W x>| < eps it is replaced by eps with its sign (+eps at
    zero), so an untrained or degenerate W gives large but finite outputs instead of inf/NaN.
    """

    def __init__(self, v: int, s: int, L: int, n_classes: int | None = None, features: str = "tensor",
                 n_features: int = 512, sigma: float | list[float] | str = 1.0, sigma_eps: float = 0.01,
                 eps: float = 1e-6, seed: int | None = None):
        super().__init__()
        n_classes = v if n_classes is None else n_classes
        for name, value in (("v", v), ("s", s), ("L", L), ("n_classes", n_classes), ("n_features", n_features)):
            check_positive_int(name, value)
        self.v, self.s, self.L, self.n_classes = v, s, L, n_classes
        self.features = check_choice("features", features, FEATURES)
        self.auto_sigma = sigma == "auto"
        if self.auto_sigma:
            sigmas = [math.nan] * L
        elif isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
            sigmas = [float(sigma)] * L
        elif isinstance(sigma, (list, tuple)) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                      for x in sigma):
            sigmas = [float(x) for x in sigma]
        else:
            sigmas = []
        if len(sigmas) != L or any(not (x > 0) for x in sigmas if not self.auto_sigma):
            raise ValueError(f"rhmfast: sigma must be a positive float, L={L} positive floats or 'auto', "
                             f"got {sigma!r}")
        if not 0 < check_real("sigma_eps", sigma_eps) < 1:
            raise ValueError(f"rhmfast: sigma_eps must be in (0, 1), got {sigma_eps!r}")
        if not check_real("eps", eps) > 0:
            raise ValueError(f"rhmfast: eps must be > 0, got {eps!r}")
        self.sigma_eps, self.eps, self.seed = sigma_eps, eps, check_seed("seed", seed)
        self.register_buffer("sigmas", torch.tensor(sigmas, dtype=torch.float64))
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        self.W = nn.ParameterList()
        self.level_features = {}
        for level in range(1, L + 1):
            kind = {"tensor+rff": "rff", "tensor+kernel": "kernel"}.get(features, features)
            if level == L and features in ("tensor+rff", "tensor+kernel", "cluster"):
                kind = "tensor"  # one-hot tokens: their clusters are the tokens, their tensor product is exact
            self.level_features[level] = kind
            dim_in = v if level == L else n_classes
            if kind == "tensor":
                dim = dim_in**s
            elif kind == "rff":
                dim = 2 * n_features
                # Standard normal; divided by the level's bandwidth where used, so "auto" can set it later.
                self.register_buffer(f"omega_{level}",
                                     torch.randn(s * dim_in, n_features, generator=gen, dtype=torch.float64))
            elif kind == "kernel":
                dim = 0
                self.register_buffer(f"centers_{level}", torch.zeros(0, s * dim_in, dtype=torch.float64))
            else:
                dim = 0
                self.register_buffer(f"centroids_{level}", torch.zeros(0, dim_in, dtype=torch.float64))
            self.W.append(nn.Parameter(torch.zeros(n_classes, dim, dtype=torch.float64), requires_grad=False))

    # ---- what the trainer sets from a stage's samples -------------------------------------------------

    def sigma(self, level: int) -> float:
        value = self.sigmas[level - 1].item()
        if math.isnan(value):
            raise RuntimeError(f"rhmfast: level {level}'s bandwidth is 'auto' and not measured yet: train the "
                               "learner (train_ren_layerwise) first")
        return value

    @torch.no_grad()
    def fit_geometry(self, level: int, h: torch.Tensor) -> dict:
        """Measures the clusters of the level's embeddings h [N, s, e] (the first patch of each of the stage's
        samples) and sets what depends on them: the cluster centres ("cluster") and the bandwidth ("auto").
        Returns dict(rho_tilde, rho_centroids, eps_S, n_clusters, n_distinct, gap) for the run record, plus
        sigma where the level uses one."""
        gen = torch.Generator().manual_seed(0 if self.seed is None else self.seed + level)
        found = cluster_embeddings(h.reshape(-1, h.shape[-1]), self.v, generator=gen)
        kind = self.level_features[level]
        if kind == "cluster":
            setattr(self, f"centroids_{level}", found["centroids"].to(self.sigmas.device))
        out = dict(rho_tilde=found["rho"], rho_centroids=found["rho_centroids"], eps_S=found["eps_S"],
                   n_clusters=found["n_clusters"], n_distinct=found["n_distinct"], gap=found["gap"])
        if kind in ("rff", "kernel"):
            if self.auto_sigma:
                if not math.isfinite(found["rho_centroids"]):
                    raise ValueError(f"rhmfast: sigma='auto' needs at least two clusters of level-{level} "
                                     "embeddings, found one: too few samples, or the level below is untrained")
                # ρ̃ between cluster centres, not between the closest two points of two clusters: one
                # straggler would otherwise shrink the bandwidth below what M random features resolve
                # (measured: rff outputs then blew up at every (m, L) = (3..4, 3..4) tried).
                self.sigmas[level - 1] = sigma_from_gap(found["rho_centroids"], self.sigma_eps)
            out["sigma"] = self.sigma(level)
        return out

    def set_kernel_centers(self, level: int, centers: torch.Tensor) -> None:
        setattr(self, f"centers_{level}", centers.to(self.sigmas.device, torch.float64))

    def set_weights(self, level: int, w: torch.Tensor) -> None:
        """W^(level) [n_classes, feature_dim]; its width follows the level's features (kernel centres,
        clusters)."""
        self.W[level - 1] = nn.Parameter(w.to(self.sigmas.device, torch.float64), requires_grad=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Kernel centres, cluster centres and their W have the sizes the training data gave them.
        for name, tensor in list(self.named_buffers()) + list(self.named_parameters()):
            incoming = state_dict.get(prefix + name)
            if name.startswith(("centers_", "centroids_", "W.")) and incoming is not None \
                    and incoming.shape != tensor.shape:
                tensor.data = torch.empty(incoming.shape, dtype=tensor.dtype, device=tensor.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- the forward pass ------------------------------------------------------------------------------

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.one_hot(tokens.long(), self.v).to(torch.float64)

    def patch_features(self, level: int, h: torch.Tensor) -> torch.Tensor:
        """Phi^(level) of every patch of embeddings h [B, T, e] -> [B, T/s, feature_dim]."""
        b, t, e = h.shape
        patches = h.reshape(b, t // self.s, self.s, e)
        kind = self.level_features[level]
        if kind == "cluster":
            centroids = getattr(self, f"centroids_{level}")
            if centroids.shape[0] == 0:  # not fitted yet: no features, a zero output
                return h.new_zeros(b, t // self.s, 0)
            nearest = torch.cdist(patches.reshape(-1, e), centroids).argmin(1)
            patches = F.one_hot(nearest, centroids.shape[0]).to(h.dtype).reshape(b, t // self.s, self.s, -1)
            kind = "tensor"
        if kind == "tensor":
            x = patches[:, :, 0]
            for k in range(1, self.s):
                x = (x.unsqueeze(-1) * patches[:, :, k].unsqueeze(-2)).flatten(-2)
            return x
        if kind == "kernel":
            flat = patches.flatten(-2)
            return rbf_kernel(flat.reshape(-1, flat.shape[-1]), getattr(self, f"centers_{level}"),
                              self.sigma(level)).reshape(b, t // self.s, -1)
        z = patches.flatten(-2) @ (getattr(self, f"omega_{level}") / self.sigma(level))
        return torch.cat([torch.cos(z), torch.sin(z)], dim=-1) / math.sqrt(z.shape[-1])

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        total = z.sum(-1, keepdim=True)
        sign = torch.where(total < 0, -1.0, 1.0).to(z.dtype)
        return z / torch.where(total.abs() < self.eps, sign * self.eps, total)

    def level_step(self, level: int, h: torch.Tensor) -> torch.Tensor:
        """Level-(level-1) embeddings from level-level ones: [B, T, e] -> [B, T/s, n_classes]. Kernel levels
        run in chunks of samples, so their [patches, centres] matrix never exceeds KERNEL_CHUNK entries."""
        w = self.W[level - 1]
        if self.level_features[level] != "kernel":
            return self.normalise(self.patch_features(level, h) @ w.t())
        rows = max(1, KERNEL_CHUNK // max(1, w.shape[1] * h.shape[1] // self.s))
        return torch.cat([self.normalise(self.patch_features(level, part) @ w.t()) for part in h.split(rows)])

    def embeddings(self, tokens: torch.Tensor, down_to: int = 0) -> list[torch.Tensor]:
        """Embeddings of levels L, L-1, ..., down_to (each [B, s^l, e]). tokens: integer ids in [0, v),
        [B, T] with T a multiple of s^(L - down_to) (the whole input s^L, or the first patches of a level)."""
        down_to = check_int("down_to", down_to, 0, self.L)
        span = self.s ** (self.L - down_to)
        check_tokens("RenLayerwiseLearner", tokens, self.v, span, f"s^(L-down_to)={span}", exact=False)
        hs = [self.embed_tokens(tokens)]
        for level in range(self.L, down_to, -1):
            hs.append(self.level_step(level, hs[-1]))
        return hs

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The level-0 output [B, n_classes] (a normalised label score; predict with argmax) of token ids
        [B, s^L] in [0, v)."""
        n = self.s**self.L  # exactly s^L here: embeddings() alone accepts several root patches
        check_tokens("RenLayerwiseLearner", tokens, self.v, n, f"s^L={n}", values=False)
        return self.embeddings(tokens)[-1][:, 0]
