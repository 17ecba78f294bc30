"""The residual layerwise learner of Daniely's label hierarchies ("Deep Networks Learn Deep Hierarchical
Models", ICML 2026): one block per level over a residual stream [x; label estimates]. Its trainer is
``rhmfast.train.residual``.

What follows the paper (its abstract and table of contents): blocks of random features of the stream with a
trained linear read-out per label, trained level by level with the blocks below frozen, and a residual
stream that carries the input and the label estimates upward. This library's choices (the paper's body was
not available): the "beta-Xavier" scale below, the bias law, the thresholded writes, the activation set.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rhmfast._checks import check_choice, check_int, check_positive_int

# "quadratic" (u^2): the features span exactly the polynomials of degree <= 2 of the stream once the width
# exceeds their number (D + 1)(D + 2) / 2, so a degree-2 label (a parity or junta of fan-in 2, a majority,
# which is a threshold of degree 1) is learned without the higher degrees' variance that ReLU features carry.
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "quadratic": torch.square}
FEATURE_KINDS = ("random", "trained")
WRITES = ("sign", "tanh")


class ResidualLayerwiseNet(nn.Module):
    """A residual network over the stream [x (d entries, +-1 floats); estimates of the labels of levels
    1..r (n_labels entries, label j at entry d + j)], one block per level of ``hierarchy`` (a
    ``LabelHierarchy`` or anything with its ``d``, ``n_labels`` and ``levels``, levels holding consecutive
    label numbers, level 1 first).

    Block i reads only the stream entries of x and of the levels below i (its first ``fan_in_i = d +
    labels of levels < i`` entries, a slice), so it never sees its own or higher labels, and computes
      features  phi_i = act(beta * (W_i z / sqrt(fan_in_i) + b_i)),   W_i [width, fan_in_i], b_i [width],
      scores    s_i = U_i phi_i + c_i,                                 U_i [n_level_i, width], c_i,
    then writes its level's estimates into the stream: ``write="sign"`` the thresholded scores (+1 where
    s >= 0, else -1), ``write="tanh"`` tanh(s). ``forward(x)`` returns the scores of all labels [n, n_labels]
    (column j: label j), each block reading the stream written by the blocks below.

    Initialisation ("beta-Xavier", this library's reading of the paper's term): W_i and b_i entries N(0, 1),
    the pre-activation scaled by beta / sqrt(fan_in) for W_i z (variance beta^2 on +-1 streams) and by beta
    for the bias, so bias and weighted sum are of one scale and the features carry every degree of the
    stream's Fourier expansion (a bias-free ReLU has no odd degrees above 1). ``features="random"``: W_i, b_i
    are frozen (parameters with requires_grad False); ``"trained"``: they learn with the read-out. The
    read-outs start at zero. The default activation, quadratic, is this library's choice (ReLU, the usual one
    of random-features analyses, is an option): measured with ridge read-outs, quadratic features learn the
    16-bit parity tree from 600 samples per stage where ReLU features need about 2000 (see the README's
    study). Thresholded writes are this library's choice: an estimate that is right is
    exactly the label, so small score errors below do not compound up the stream (tanh writes pass them on).
    All randomness comes from ``seed`` (None: torch's global generator). float32, on any device.
    """

    def __init__(self, hierarchy, width: int = 4096, beta: float = 1.0, activation: str = "quadratic",
                 features: str = "random", seed: int | None = None, write: str = "sign"):
        super().__init__()
        self.width = check_positive_int("width", width)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"rhmfast: beta must be a finite float > 0, got {beta!r}")
        self.beta = float(beta)
        self.activation = check_choice("activation", activation, tuple(ACTIVATIONS))
        self.features = check_choice("features", features, FEATURE_KINDS)
        self.write = check_choice("write", write, WRITES)
        if seed is not None:
            seed = check_int("seed", seed, 0, (1 << 64) - 1)
        self.seed = seed
        try:
            d, n_labels = int(hierarchy.d), int(hierarchy.n_labels)
            levels = [torch.as_tensor(v) for v in hierarchy.levels]
        except (AttributeError, TypeError) as error:
            raise ValueError(f"rhmfast: hierarchy must have d, n_labels and levels, got {hierarchy!r}") from error
        offsets = [0]
        for level in levels:
            expected = torch.arange(offsets[-1], offsets[-1] + level.numel())
            if level.numel() == 0 or not torch.equal(level.cpu(), expected):
                raise ValueError("rhmfast: hierarchy.levels must hold consecutive label numbers, level 1 first")
            offsets.append(offsets[-1] + level.numel())
        if d < 1 or offsets[-1] != n_labels:
            raise ValueError(f"rhmfast: hierarchy must have d >= 1 and levels covering its n_labels = {n_labels}")
        self.d, self.n_labels, self.r = d, n_labels, len(levels)
        self.level_sizes = [level.numel() for level in levels]
        self.offsets = offsets  # level i (1-based) holds labels offsets[i-1] .. offsets[i]-1
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        trained = features == "trained"
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.readouts = nn.ModuleList()
        for i in range(self.r):
            fan_in = d + offsets[i]
            self.weights.append(nn.Parameter(torch.randn(width, fan_in, generator=gen), requires_grad=trained))
            self.biases.append(nn.Parameter(torch.randn(width, generator=gen), requires_grad=trained))
            readout = nn.Linear(width, self.level_sizes[i])
            nn.init.zeros_(readout.weight)
            nn.init.zeros_(readout.bias)
            self.readouts.append(readout)

    def _check_level(self, level: int) -> int:
        return check_int("level", level, 1, self.r)

    def block_parameters(self, level: int) -> list[nn.Parameter]:
        """The parameters block ``level`` trains: its read-out, and its features when features="trained"."""
        i = self._check_level(level) - 1
        own = list(self.readouts[i].parameters())
        return own + [self.weights[i], self.biases[i]] if self.features == "trained" else own

    def block_features(self, level: int, stream: torch.Tensor) -> torch.Tensor:
        """phi [n, width] of block ``level`` on a stream [n, >= its fan-in] (entries beyond are not read)."""
        i = self._check_level(level) - 1
        z = stream[:, :self.d + self.offsets[i]]
        w = self.weights[i]
        pre = torch.addmm(self.biases[i], z, w.t(), alpha=1.0 / math.sqrt(w.shape[1]))
        return ACTIVATIONS[self.activation](self.beta * pre)

    def block_scores(self, level: int, stream: torch.Tensor) -> torch.Tensor:
        """Scores [n, level size] of level ``level``'s labels, read from the stream's entries below it."""
        return self.readouts[level - 1](self.block_features(level, stream))

    def write_estimates(self, scores: torch.Tensor) -> torch.Tensor:
        """What a block writes into the stream for its scores."""
        if self.write == "sign":
            return torch.where(scores >= 0, 1.0, -1.0).to(scores.dtype)
        return torch.tanh(scores)

    def stream(self, x: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """The stream [n, d + labels of levels 1..levels] after the blocks of levels 1..``levels`` (default
        all) have written their estimates; x [n, d] of +-1 (any dtype)."""
        levels = self.r if levels is None else check_int("levels", levels, 0, self.r)
        z = self._input(x)
        for level in range(1, levels + 1):
            z = torch.cat([z, self.write_estimates(self.block_scores(level, z))], 1)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of all labels [n, n_labels], level by level."""
        z = self._input(x)
        scores = []
        for level in range(1, self.r + 1):
            scores.append(self.block_scores(level, z))
            if level < self.r:
                z = torch.cat([z, self.write_estimates(scores[-1])], 1)
        return torch.cat(scores, 1)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.d:
            raise ValueError(f"rhmfast: x must have shape [n, d={self.d}], got {tuple(x.shape)}")
        return x.to(device=self.weights[0].device, dtype=torch.float32)

    def extra_repr(self) -> str:
        return (f"d={self.d}, levels={self.level_sizes}, width={self.width}, beta={self.beta}, "
                f"activation={self.activation!r}, features={self.features!r}, write={self.write!r}")


class ShallowMLP(nn.Module):
    """The shallow baseline of label hierarchies: one hidden layer on x [n, d] of +-1,
      scores = V act(W x / sqrt(d) + b) + c,   W [width, d], b [width] N(0, 1); V [n_out, width], c zero,
    all trained (end to end, ``rhmfast.train.train_hierarchy_end_to_end``). n_out: the labels it predicts
    (the top level's, or all). Randomness from ``seed`` (None: torch's global generator)."""

    def __init__(self, d: int, n_out: int, width: int = 1024, activation: str = "relu", seed: int | None = None):
        super().__init__()
        self.d = check_positive_int("d", d)
        self.n_out = check_positive_int("n_out", n_out)
        self.width = check_positive_int("width", width)
        self.activation = check_choice("activation", activation, tuple(ACTIVATIONS))
        self.seed = None if seed is None else check_int("seed", seed, 0, (1 << 64) - 1)
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(width, d, generator=gen))
        self.bias = nn.Parameter(torch.randn(width, generator=gen))
        self.readout = nn.Linear(width, n_out)
        nn.init.zeros_(self.readout.weight)
        nn.init.zeros_(self.readout.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.d:
            raise ValueError(f"rhmfast: x must have shape [n, d={self.d}], got {tuple(x.shape)}")
        x = x.to(device=self.weight.device, dtype=torch.float32)
        pre = torch.addmm(self.bias, x, self.weight.t(), alpha=1.0 / math.sqrt(self.d))
        return self.readout(ACTIVATIONS[self.activation](pre))

    def extra_repr(self) -> str:
        return f"d={self.d}, n_out={self.n_out}, width={self.width}, activation={self.activation!r}"
