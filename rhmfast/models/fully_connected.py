"""The shallow baseline: a fully-connected network on the one-hot input, built from token ids on the fly."""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from rhmfast._checks import check_positive_int, check_seed, check_tokens
from rhmfast.models._common import seeded_generator
from rhmfast.models._reference import NORMS, check_keys, check_shape, reference_state, resolve_norm

_WEIGHT = re.compile(r"hidden\.(\d+)\.0\.weight")


class FullyConnected(nn.Module):
    """The shallow baseline: an MLP on the flattened one-hot input [B, d*v] (position-major: entry p*v + t is
    token t at position p; built on the fly from token ids, never stored), depth hidden layers of the given
    width with ReLU, then a readout.

    ``norm=None`` (default): ``nn.Linear`` layers and readout (``hidden``, ``out``; nn.Linear's
    initialisation, bias on by default), ``lr_scale`` 1.

    ``norm="std"`` or ``"mf"``: the 2024 reference library's fcn (models/fcn.py): weights and biases N(0,1),
    each layer relu((h W^T + b) / sqrt(fan_in)) (``weights``, ``biases``; bias off by default, as the
    reference's --bias), readout ``beta`` [H, n_classes] ~ N(0,1) divided by sqrt(H) ("std") or H ("mf",
    ``lr_scale`` = H: the reference's lr × width). depth 0 is its perceptron: ``beta`` [d*v, n_classes]
    divided by sqrt(d) whatever the norm, ``lr_scale`` 1, width unused (None allowed). The draws follow the
    reference's order, so ``seed=k`` gives the weights the reference draws after ``torch.manual_seed(k)``
    (on the CPU; ``seed=None`` draws from torch's global generator, as the reference does).

    ``whiten=True`` feeds (onehot - 1/v) / sqrt(1 - 1/v), the reference's ``--whitening 1``.
    """

    def __init__(self, v: int, d: int, width: int | None, depth: int, n_classes: int, seed: int | None = None, *,
                 norm: str | None = None, bias: bool | None = None, whiten: bool = False):
        super().__init__()
        if norm is not None and norm not in NORMS:
            raise ValueError(f"rhmfast: norm must be None (nn.Linear layers) or one of {NORMS} (the reference's "
                             f"fcn), got {norm!r}")
        for name, value in (("v", v), ("d", d), ("n_classes", n_classes)):
            check_positive_int(name, value)
        if norm is None:
            if depth == 0 and not isinstance(depth, bool):
                raise ValueError("rhmfast: depth must be an int >= 1, got 0 (depth 0, the reference's perceptron, "
                                 "needs norm='std' or 'mf')")
            check_positive_int("depth", depth)
        elif isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"rhmfast: depth must be an int >= 0, got {depth!r}")
        if depth > 0 or width is not None:
            check_positive_int("width", width)
        if bias is not None and not isinstance(bias, bool):
            raise TypeError(f"rhmfast: bias must be a bool or None, got {type(bias).__name__}")
        if not isinstance(whiten, bool):
            raise TypeError(f"rhmfast: whiten must be a bool, got {type(whiten).__name__}")
        if whiten and v < 2:
            raise ValueError(f"rhmfast: whiten=True needs v >= 2 (it divides by sqrt(1 - 1/v)), got v={v}")
        self.v, self.d, self.width, self.depth, self.n_classes = v, d, width, depth, n_classes
        self.seed, self.norm, self.whiten = check_seed("seed", seed), norm, whiten
        self.bias = (norm is None) if bias is None else bias
        sizes = [d * v] + [width] * depth
        gen = seeded_generator(seed)
        if norm is None:
            self.hidden = nn.ModuleList(nn.Linear(a, b, bias=self.bias) for a, b in zip(sizes[:-1], sizes[1:]))
            self.out = nn.Linear(width, n_classes, bias=self.bias)
            if seed is not None:  # nn.Linear's initialisation, drawn from a private generator
                with torch.no_grad():
                    for layer in [*self.hidden, self.out]:
                        bound = 1.0 / math.sqrt(layer.in_features)
                        layer.weight.uniform_(-bound, bound, generator=gen)
                        if layer.bias is not None:
                            layer.bias.uniform_(-bound, bound, generator=gen)
            return
        # The reference's order of draws: layer by layer its weight then its bias, the readout last.
        weights, biases = [], []
        for a, b in zip(sizes[:-1], sizes[1:]):
            weights.append(nn.Parameter(torch.randn(b, a, generator=gen)))
            if self.bias:
                biases.append(nn.Parameter(torch.randn(b, generator=gen)))
        self.weights = nn.ParameterList(weights)
        self.biases = nn.ParameterList(biases) if self.bias and depth else None
        self.beta = nn.Parameter(torch.randn(sizes[-1], n_classes, generator=gen))

    @property
    def readout_norm(self) -> float:
        """The reference's readout divisor: sqrt(d) at depth 0, else sqrt(H) ("std") or H ("mf"); 1 for norm=None."""
        if self.norm is None:
            return 1.0
        if self.depth == 0:
            return math.sqrt(self.d)
        return math.sqrt(self.width) if self.norm == "std" else float(self.width)

    @property
    def lr_scale(self) -> float:
        """H for the reference's mean-field MLP (its lr × width); 1 otherwise (the perceptron included)."""
        return float(self.width) if self.norm == "mf" and self.depth > 0 else 1.0

    def encode(self, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The network's input [B, d*v]: the flattened one-hot of the ids, whitened where asked."""
        x = F.one_hot(tokens.long(), self.v).flatten(1).to(dtype)
        if self.whiten:
            x = (x - 1.0 / self.v) * (1.0 - 1.0 / self.v) ** -0.5
        return x

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # Integer ids [B, d] in [0, v) (floats were truncated and out-of-range ids hit one_hot's bare error).
        check_tokens("FullyConnected", tokens, self.v, self.d, f"d={self.d}")
        if self.norm is None:
            h = self.encode(tokens, self.out.weight.dtype)
            for layer in self.hidden:
                h = torch.relu(layer(h))
            return self.out(h)
        h = self.encode(tokens, self.beta.dtype)
        for l, w in enumerate(self.weights):
            h = torch.relu(F.linear(h, w, None if self.biases is None else self.biases[l]) / math.sqrt(w.shape[1]))
        return h @ self.beta / self.readout_norm

    # ---- the reference's parameter layout -------------------------------------------------------------
    # models/fcn.py: MLP: hidden.{l} = Sequential(MyLinear, ReLU); MyLinear.weight [out, in], MyLinear.bias
    # [out] (--bias), added before the 1/sqrt(in) division; readout [H, n_c]. Perceptron: readout [d*v, n_c].

    def to_reference_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under the reference fcn's keys (MLP, or Perceptron at depth 0), in its order: ``readout``
        ([H or d*v, n_classes]), ``hidden.{l}.0.weight`` [out, in], ``hidden.{l}.0.bias`` [out] (bias=True). Exact copies;
        only for norm="std"/"mf" (the nn.Linear parametrisation's readout bias has no reference counterpart)."""
        if self.norm is None:
            raise ValueError("rhmfast: to_reference_state_dict needs the reference's parametrisation (norm='std' "
                             "or 'mf'); norm=None has nn.Linear layers and a readout bias the reference lacks")
        state = {"readout": self.beta.detach().clone()}  # own parameters first, as nn.Module.state_dict
        for l, w in enumerate(self.weights):
            state[f"hidden.{l}.0.weight"] = w.detach().clone()
            if self.biases is not None:
                state[f"hidden.{l}.0.bias"] = self.biases[l].detach().clone()
        return state

    @classmethod
    def from_reference(cls, model_or_state_dict, *, v: int | None = None, d: int | None = None,
                       norm: str | None = None, whiten: bool = False) -> "FullyConnected":
        """The FullyConnected (norm "std"/"mf") computing what a reference ``MLP`` or ``Perceptron``
        (models/fcn.py) computes on the flattened one-hot of [B, d] token ids, from the module or its state
        dict, on the tensors' device and dtype. The input size d*v is in the shapes; give v or d (both are
        checked). width, depth, n_classes and bias come from the shapes. norm: a module's is read off its
        readout divisor (H: "mf", sqrt(H): "std"; a given norm is checked); a state dict has none, so it
        defaults to "mf", what the reference's init.py builds. whiten: the data's --whitening."""
        owner = "FullyConnected.from_reference"
        state, module_norm = reference_state(model_or_state_dict, owner)
        layers = sorted(int(m.group(1)) for m in map(_WEIGHT.fullmatch, state) if m)
        if "readout" not in state:
            raise ValueError(f"rhmfast: {owner} needs the reference fcn's keys 'hidden.{{l}}.0.weight' (MLP) and "
                             f"'readout', got keys {sorted(state)}")
        depth = layers[-1] + 1 if layers else 0
        bias = "hidden.0.0.bias" in state
        keys = [key for l in range(depth) for key in ([f"hidden.{l}.0.weight"]
                                                      + ([f"hidden.{l}.0.bias"] if bias else []))] + ["readout"]
        check_keys(state, keys, owner)
        first = state["hidden.0.0.weight" if depth else "readout"]
        if first.dim() != 2:
            raise ValueError(f"rhmfast: {owner}: {'hidden.0.0.weight' if depth else 'readout'} must be a matrix, "
                             f"got shape {list(first.shape)}")
        n_in = first.shape[1] if depth else first.shape[0]
        if v is None and d is None:
            raise ValueError(f"rhmfast: {owner} needs v or d: the input size d*v = {n_in} does not tell them apart")
        for name, value in (("v", v), ("d", d)):
            if value is not None:
                check_positive_int(name, value)
        v = n_in // d if v is None else v
        d = n_in // v if d is None else d
        if d * v != n_in:
            raise ValueError(f"rhmfast: {owner}: the reference's input size is {n_in}, not d*v = {d}*{v}")
        width = first.shape[0] if depth else None
        readout = state["readout"]
        if readout.dim() != 2:
            raise ValueError(f"rhmfast: {owner}: readout must be a matrix, got shape {list(readout.shape)}")
        n_classes = readout.shape[1]
        for l in range(depth):
            check_shape(state, f"hidden.{l}.0.weight", (width, n_in if l == 0 else width), owner)
            if bias:
                check_shape(state, f"hidden.{l}.0.bias", (width,), owner)
        check_shape(state, "readout", (width if depth else n_in, n_classes), owner)
        if depth:
            norm = resolve_norm(norm, module_norm, width, owner)
        else:
            if module_norm is not None and not math.isclose(module_norm, math.sqrt(d), rel_tol=1e-12):
                raise ValueError(f"rhmfast: {owner}: the perceptron divides its readout by {module_norm}, not by "
                                 f"sqrt(d) = {math.sqrt(d)}")
            norm = resolve_norm(norm, None, 1, owner)
        # seed=0: a private generator, so that loading never advances torch's global one.
        model = cls(v, d, width, depth, n_classes, seed=0, norm=norm, bias=bias, whiten=whiten)
        model.seed = None
        model.to(device=first.device, dtype=first.dtype)
        with torch.no_grad():
            for l in range(depth):
                model.weights[l].copy_(state[f"hidden.{l}.0.weight"])
                if bias:
                    model.biases[l].copy_(state[f"hidden.{l}.0.bias"])
            model.beta.copy_(readout)
        return model
