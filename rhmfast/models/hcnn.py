"""The hierarchical CNN of the 2024 reference library's recipe, on token ids [B, s^L]."""
from __future__ import annotations

import math

import torch
from torch import nn

from rhmfast._checks import check_choice, check_int, check_positive_int, check_seed, check_tokens
from rhmfast.models._common import seeded_generator
from rhmfast.ops.patch_conv import patch_conv
from rhmfast.ops.patch_conv_stack import patch_conv_stack
from rhmfast.ops.token_patch_embed import token_patch_embed
from rhmfast.reference.patch_conv import ACTIVATIONS

NORMS = ("std", "mf")


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
        self.seed = check_seed("seed", seed)
        gen = seeded_generator(seed)
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

    def _check_input(self, tokens: torch.Tensor) -> None:
        """Token ids [B, s^L] of an integer dtype, else a TypeError/ValueError naming the expected and the
        received shape or dtype. The ids' range [0, v) is checked by the first layer's op (token_patch_embed:
        in eager mode, and in the compiled kernels under torch.compile), so it is not scanned twice here."""
        check_tokens("HierarchicalCNN", tokens, self.v, self.s**self.L, f"s^L={self.s**self.L}", values=False)

    def layer_outputs(self, tokens: torch.Tensor, depth: int | None = None) -> list[torch.Tensor]:
        """Outputs of layers 1..depth (default L), channels-last [B, s^L/s^l, H], in one fused call."""
        depth = self.L if depth is None else check_int("depth", depth, 1, self.L)
        self._check_input(tokens)
        return patch_conv_stack(tokens, self.embed, list(self.weights)[:depth - 1], self._scaled_biases(depth),
                                patch_size=self.s, scales=self.scales[:depth], activation=self.activation,
                                return_all=True)

    def layer(self, l: int, inputs: torch.Tensor) -> torch.Tensor:
        """Layer l (1-based) alone: from token ids when l = 1, else from layer l-1's output."""
        check_int("l", l, 1, self.L)
        bias = None if self.biases is None else self.biases[l - 1] * self.scales[l - 1]
        if l == 1:
            self._check_input(inputs)
            return token_patch_embed(inputs, self.embed, bias, patch_size=self.s, scale=self.scales[0],
                                     activation=self.activation)
        return patch_conv(inputs, self.weights[l - 2], bias, patch_size=self.s, scale=self.scales[l - 1],
                          activation=self.activation)

    def layer_parameters(self, l: int) -> list[nn.Parameter]:
        check_int("l", l, 1, self.L)
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
