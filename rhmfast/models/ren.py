"""The layerwise learner of Ren, Dandi, Krzakala, Lee (2026): frozen patch features, one trained linear
map per level, outputs normalised to sum one. Its trainer is ``rhmfast.train.ren``."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rhmfast._checks import check_choice, check_positive_int
from rhmfast.models._common import seeded_generator

FEATURES = ("tensor", "rff", "tensor+rff")


class RenLayerwiseLearner(nn.Module):
    """The layerwise learner of Ren et al. (2026), levels counted from the root (level L = tokens).

    Level l (L down to 1) maps each patch of s level-l embeddings to a level-(l-1) embedding
    h = W x / <1, W x>, x = Phi(h_1 ∘ ... ∘ h_s), with one W^(l) [n_classes, feature_dim] shared by the
    patches of the level. Embeddings are one-hot tokens at level L and n_classes-vectors above.

    features="tensor": x = h_1 ⊗ ... ⊗ h_s (exact at the input level, dimension e^s);
    features="rff": x = M^(-1/2) (cos(ω_j·h), sin(ω_j·h))_j, ω_j ~ N(0, σ^-2 I), frozen (dimension 2M);
    sigma is one bandwidth or one per level (index l-1 for level l). features="tensor+rff": the exact
    tensor product at the input level (level L), random Fourier features above.

    The normaliser <1, W x> is guarded: where |<1, W x>| < eps it is replaced by eps with its sign (+eps at
    zero), so an untrained or degenerate W gives large but finite outputs instead of inf/NaN.
    """

    def __init__(self, v: int, s: int, L: int, n_classes: int | None = None, features: str = "tensor",
                 n_features: int = 512, sigma: float | list[float] = 1.0, eps: float = 1e-6, seed: int | None = None):
        super().__init__()
        n_classes = v if n_classes is None else n_classes
        for name, value in (("v", v), ("s", s), ("L", L), ("n_classes", n_classes), ("n_features", n_features)):
            check_positive_int(name, value)
        self.v, self.s, self.L, self.n_classes = v, s, L, n_classes
        self.features = check_choice("features", features, FEATURES)
        sigmas = [float(sigma)] * L if isinstance(sigma, (int, float)) else [float(x) for x in sigma]
        if len(sigmas) != L or any(not x > 0 for x in sigmas):
            raise ValueError(f"rhmfast: sigma must be a positive float or L={L} positive floats, got {sigma!r}")
        if not eps > 0:
            raise ValueError(f"rhmfast: eps must be > 0, got {eps!r}")
        self.sigmas, self.eps, self.seed = sigmas, eps, seed
        gen = seeded_generator(seed)
        self.W = nn.ParameterList()
        self.level_features = {level: "tensor" if features == "tensor" or (features == "tensor+rff" and level == L)
                               else "rff" for level in range(1, L + 1)}
        for level in range(1, L + 1):
            dim_in = v if level == L else n_classes
            if self.level_features[level] == "tensor":
                dim = dim_in**s
            else:
                dim = 2 * n_features
                omega = torch.randn(s * dim_in, n_features, generator=gen, dtype=torch.float64) / sigmas[level - 1]
                self.register_buffer(f"omega_{level}", omega)
            self.W.append(nn.Parameter(torch.zeros(n_classes, dim, dtype=torch.float64), requires_grad=False))

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.one_hot(tokens.long(), self.v).to(torch.float64)

    def patch_features(self, level: int, h: torch.Tensor) -> torch.Tensor:
        """Phi^(level) of every patch of embeddings h [B, T, e] -> [B, T/s, feature_dim]."""
        b, t, e = h.shape
        patches = h.reshape(b, t // self.s, self.s, e)
        if self.level_features[level] == "tensor":
            x = patches[:, :, 0]
            for k in range(1, self.s):
                x = (x.unsqueeze(-1) * patches[:, :, k].unsqueeze(-2)).flatten(-2)
            return x
        z = patches.flatten(-2) @ getattr(self, f"omega_{level}")
        return torch.cat([torch.cos(z), torch.sin(z)], dim=-1) / math.sqrt(z.shape[-1])

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        total = z.sum(-1, keepdim=True)
        sign = torch.where(total < 0, -1.0, 1.0).to(z.dtype)
        return z / torch.where(total.abs() < self.eps, sign * self.eps, total)

    def level_step(self, level: int, h: torch.Tensor) -> torch.Tensor:
        """Level-(level-1) embeddings from level-level ones: [B, T, e] -> [B, T/s, n_classes]."""
        return self.normalise(self.patch_features(level, h) @ self.W[level - 1].t())

    def embeddings(self, tokens: torch.Tensor, down_to: int = 0) -> list[torch.Tensor]:
        """Embeddings of levels L, L-1, ..., down_to (each [B, s^l, e])."""
        hs = [self.embed_tokens(tokens)]
        for level in range(self.L, down_to, -1):
            hs.append(self.level_step(level, hs[-1]))
        return hs

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The level-0 output [B, n_classes] (a normalised label score; predict with argmax)."""
        return self.embeddings(tokens)[-1][:, 0]
