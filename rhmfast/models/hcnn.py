"""Learners of the RHM: the hierarchical CNN of the 2024 reference library's recipe, the shallow
fully-connected baseline, and the layerwise learner of Ren et al. (2026). All take token ids [B, s^L] as input.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from rhmfast.ops.patch_conv import patch_conv
from rhmfast.ops.patch_conv_stack import patch_conv_stack
from rhmfast.ops.token_patch_embed import token_patch_embed
from rhmfast.reference.patch_conv import ACTIVATIONS

NORMS = ("std", "mf")
FEATURES = ("tensor", "rff", "tensor+rff")


def device_of(model) -> torch.device:
    """Where a model's parameters (or buffers) live; the CPU for a model that has none. Trainers and
    observables generate their data there."""
    if isinstance(model, nn.Module):
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            return tensor.device
    return torch.device("cpu")


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"rhmfast: {name} must be an int >= 1, got {value!r}")
    return value


def check_choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"rhmfast: {name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(seed)


class HierarchicalCNN(nn.Module):
    """The 2024 library's hCNN on token ids: L patchwise layers (kernel = stride = s, width H, activation,
    weights N(0,1), each convolution divided by sqrt(C_in*s)), mean over the remaining positions, readout
    beta [H, n_classes] ~ N(0,1) divided by sqrt(H) (norm="std") or H (norm="mf").

    Parameters, stored in the layout the fused ops read (the whole trunk is one ``patch_conv_stack`` call):
    ``embed`` [s, v, H] (embed[k, t] = conv_1.weight[:, t, k]), ``weights[l]`` [H, s*H] in (k, c) order
    (= conv_{l+2}.weight.permute(0, 2, 1) flattened), ``biases[l]`` [H] in the reference's
    parametrisation (added before the 1/sqrt(C_in*s) division, as in a biased Conv1d that is then
    scaled), ``beta`` [H, n_classes]. ``seed`` makes the initialisation reproducible.
    """

    def __init__(self, v: int, width: int, s: int, L: int, n_classes: int, norm: str = "std", bias: bool = False,
                 activation: str = "relu", seed: int | None = None):
        super().__init__()
        for name, value in (("v", v), ("width", width), ("s", s), ("L", L), ("n_classes", n_classes)):
            check_positive_int(name, value)
        self.v, self.width, self.s, self.L, self.n_classes = v, width, s, L, n_classes
        self.norm = check_choice("norm", norm, NORMS)
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.seed = seed
        gen = _generator(seed)
        self.embed = nn.Parameter(torch.randn(s, v, width, generator=gen))
        self.weights = nn.ParameterList([nn.Parameter(torch.randn(width, s * width, generator=gen))
                                         for _ in range(L - 1)])
        self.biases = (nn.ParameterList([nn.Parameter(torch.randn(width, generator=gen)) for _ in range(L)])
                       if bias else None)
        self.beta = nn.Parameter(torch.randn(width, n_classes, generator=gen))
        self.scales = [1.0 / math.sqrt(v * s)] + [1.0 / math.sqrt(width * s)] * (L - 1)

    @property
    def readout_norm(self) -> float:
        return math.sqrt(self.width) if self.norm == "std" else float(self.width)

    @property
    def lr_scale(self) -> float:
        """Mean-field training multiplies the learning rate by H (the 2024 reference library's recipe)."""
        return float(self.width) if self.norm == "mf" else 1.0

    def _scaled_biases(self, depth: int):
        # The op computes act(scale*z + b); the reference computes act(scale*(z + b)).
        return None if self.biases is None else [b * c for b, c in zip(list(self.biases)[:depth], self.scales)]

    def layer_outputs(self, tokens: torch.Tensor, depth: int | None = None) -> list[torch.Tensor]:
        """Outputs of layers 1..depth (default L), channels-last [B, s^L/s^l, H], in one fused call."""
        depth = self.L if depth is None else depth
        return patch_conv_stack(tokens, self.embed, list(self.weights)[:depth - 1], self._scaled_biases(depth),
                                patch_size=self.s, scales=self.scales[:depth], activation=self.activation,
                                return_all=True)

    def layer(self, l: int, inputs: torch.Tensor) -> torch.Tensor:
        """Layer l (1-based) alone: from token ids when l = 1, else from layer l-1's output."""
        bias = None if self.biases is None else self.biases[l - 1] * self.scales[l - 1]
        if l == 1:
            return token_patch_embed(inputs, self.embed, bias, patch_size=self.s, scale=self.scales[0],
                                     activation=self.activation)
        return patch_conv(inputs, self.weights[l - 2], bias, patch_size=self.s, scale=self.scales[l - 1],
                          activation=self.activation)

    def layer_parameters(self, l: int) -> list[nn.Parameter]:
        params = [self.embed if l == 1 else self.weights[l - 2]]
        return params + ([self.biases[l - 1]] if self.biases is not None else [])

    def readout(self, h: torch.Tensor, beta: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over positions of a channels-last [B, T, H] output, then the scaled readout."""
        return h.mean(1) @ (self.beta if beta is None else beta) / self.readout_norm

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.readout(self.layer_outputs(tokens)[-1])

    # ---- the reference's parameter layout -------------------------------------------------------------
    # Keys: "hier.{l}.weight" [C_out, C_in, s] (nn.Conv1d layout, l = 0 .. L-1; C_in = v for l = 0),
    # "hier.{l}.bias" [C_out] when bias=True, "beta" [H, n_classes]. The function is
    # readout(mean(act(conv1d(x, W_l, b_l, stride=s) / sqrt(C_in*s)) ...)) on one-hot x [B, v, s^L].

    def to_reference_state_dict(self) -> dict[str, torch.Tensor]:
        state = {"hier.0.weight": self.embed.detach().permute(2, 1, 0).contiguous()}
        for l, w in enumerate(self.weights, start=1):
            state[f"hier.{l}.weight"] = w.detach().reshape(self.width, self.s, self.width).permute(0, 2, 1).contiguous()
        if self.biases is not None:
            for l, b in enumerate(self.biases):
                state[f"hier.{l}.bias"] = b.detach().clone()
        state["beta"] = self.beta.detach().clone()
        return state

    @classmethod
    def from_reference_state_dict(cls, state: dict[str, torch.Tensor], s: int, norm: str = "std",
                                  activation: str = "relu") -> "HierarchicalCNN":
        """The model holding the weights of a reference state dict (keys as in to_reference_state_dict)."""
        L = sum(1 for key in state if key.endswith(".weight") and key.startswith("hier."))
        if L == 0 or "beta" not in state:
            raise ValueError("rhmfast: a reference state dict needs 'hier.{l}.weight' for l = 0..L-1 and 'beta', "
                             f"got keys {sorted(state)}")
        first = state["hier.0.weight"]
        if first.dim() != 3 or first.shape[2] != s:
            raise ValueError(f"rhmfast: hier.0.weight must have shape [H, v, s={s}], got {list(first.shape)}")
        width, v = first.shape[0], first.shape[1]
        n_classes = state["beta"].shape[1]
        model = cls(v, width, s, L, n_classes, norm=norm, bias="hier.0.bias" in state, activation=activation)
        with torch.no_grad():
            model.embed.copy_(first.permute(2, 1, 0))
            for l in range(1, L):
                w = state[f"hier.{l}.weight"]
                if tuple(w.shape) != (width, width, s):
                    raise ValueError(f"rhmfast: hier.{l}.weight must have shape {[width, width, s]}, got {list(w.shape)}")
                model.weights[l - 1].copy_(w.permute(0, 2, 1).reshape(width, s * width))
            if model.biases is not None:
                for l in range(L):
                    model.biases[l].copy_(state[f"hier.{l}.bias"])
            model.beta.copy_(state["beta"])
        return model


class FullyConnected(nn.Module):
    """The shallow baseline: an MLP on the flattened one-hot input [B, d*v] (built on the fly from token
    ids, never stored), depth hidden layers of the given width with ReLU, then a linear readout."""

    lr_scale = 1.0  # no mean-field learning-rate scaling

    def __init__(self, v: int, d: int, width: int, depth: int, n_classes: int, seed: int | None = None):
        super().__init__()
        for name, value in (("v", v), ("d", d), ("width", width), ("depth", depth), ("n_classes", n_classes)):
            check_positive_int(name, value)
        self.v, self.d, self.n_classes, self.seed = v, d, n_classes, seed
        sizes = [d * v] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(width, n_classes)
        if seed is not None:  # nn.Linear's initialisation, drawn from a private generator
            gen = _generator(seed)
            with torch.no_grad():
                for layer in [*self.hidden, self.out]:
                    bound = 1.0 / math.sqrt(layer.in_features)
                    layer.weight.uniform_(-bound, bound, generator=gen)
                    layer.bias.uniform_(-bound, bound, generator=gen)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.shape[1] != self.d:
            raise ValueError(f"rhmfast: FullyConnected expects tokens [B, d={self.d}], got {list(tokens.shape)}")
        h = F.one_hot(tokens.long(), self.v).flatten(1).to(self.out.weight.dtype)
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return self.out(h)


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
        gen = _generator(seed)
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
