"""Reading the 2024 reference library's models (random-hierarchy-model: ``models/cnn.py`` hCNN,
``models/lcn.py`` hLCN, ``models/fcn.py`` MLP and Perceptron): their parameters, from the module or from its
state dict."""
from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

NORMS = ("std", "mf")
_FILTER = re.compile(r"hidden\.(\d+)\.0\.filter")


def reference_state(obj, owner: str) -> tuple[dict[str, torch.Tensor], float | None]:
    """(state dict, the module's readout divisor ``norm`` or None) of a reference module or state dict."""
    if isinstance(obj, nn.Module):
        norm = getattr(obj, "norm", None)
        norm = float(norm) if isinstance(norm, numbers.Real) and not isinstance(norm, bool) else None
        return dict(obj.state_dict()), norm
    if isinstance(obj, Mapping):
        bad = [key for key, value in obj.items() if not isinstance(value, torch.Tensor)]
        if bad:
            raise TypeError(f"rhmfast: {owner} expects a state dict of tensors, got non-tensor values at {bad}")
        return dict(obj), None
    raise TypeError(f"rhmfast: {owner} expects the reference's nn.Module or its state dict, got {type(obj).__name__}")


def check_keys(state: Mapping, expected: list[str], owner: str) -> None:
    """The state dict holds exactly the expected keys, else a ValueError naming the missing and extra ones."""
    missing = [key for key in expected if key not in state]
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"rhmfast: {owner}: the reference's keys are {expected}; missing {missing}, unexpected {extra}")


def check_shape(state: Mapping, key: str, shape: tuple, owner: str) -> torch.Tensor:
    tensor = state[key]
    if tuple(tensor.shape) != tuple(shape) or not tensor.is_floating_point():
        raise ValueError(f"rhmfast: {owner}: {key} must be a floating-point tensor of shape {list(shape)}, got "
                         f"{list(tensor.shape)} ({tensor.dtype})")
    return tensor


def resolve_norm(norm: str | None, module_norm: float | None, width: int, owner: str) -> str:
    """The readout normalisation: the one asked for, checked against the module's divisor where there is a
    module (H: "mf", sqrt(H): "std"); a state dict carries none, so it defaults to "mf", which the reference's
    init.py builds for every hcnn and fcn."""
    if norm is not None and norm not in NORMS:
        raise ValueError(f"rhmfast: norm must be one of {NORMS} or None, got {norm!r}")
    if module_norm is None:
        return "mf" if norm is None else norm
    matches = [name for name, value in (("mf", width), ("std", math.sqrt(width)))
               if math.isclose(module_norm, value, rel_tol=1e-12)]
    if not matches:
        raise ValueError(f"rhmfast: {owner}: the model divides its readout by {module_norm}, neither H = {width} "
                         f"('mf') nor sqrt(H) ('std')")
    if norm is None:
        return matches[0]
    if norm not in matches:
        raise ValueError(f"rhmfast: {owner}: norm={norm!r}, but the model divides its readout by {module_norm} "
                         f"(norm={matches[0]!r})")
    return norm


@dataclass(frozen=True)
class HiddenLayers:
    """A reference network of filter layers ``hidden.{l}.0`` and a ``readout`` (the hCNN, the hLCN), as
    read_hidden_layers reads it: its state dict, the module's readout divisor (None for a state dict) and the
    sizes read off its tensors."""
    state: dict[str, torch.Tensor]
    module_norm: float | None
    L: int
    bias: bool
    width: int
    v: int
    s: int
    n_classes: int

    def build(self, cls, norm: str | None, owner: str, **arguments):
        """cls(v, width, s, L, n_classes, norm=..., bias=..., **arguments) on the first filter's device and dtype,
        for the caller to copy the weights into: norm resolved (resolve_norm), seed None."""
        norm = resolve_norm(norm, self.module_norm, self.width, owner)
        # seed=0: a private generator, so that loading never advances torch's global one.
        model = cls(self.v, self.width, self.s, self.L, self.n_classes, norm=norm, bias=self.bias, seed=0, **arguments)
        model.seed = None
        first = self.state["hidden.0.0.filter"]
        return model.to(device=first.device, dtype=first.dtype)


def read_hidden_layers(model_or_state_dict, owner: str, network: str, first_dims: str,
                       s: int | None) -> HiddenLayers:
    """A reference hCNN or hLCN (``network`` names it in messages), its keys checked: ``hidden.{l}.0.filter``
    for l = 0..L-1, ``hidden.{l}.0.bias`` for every layer or none, ``readout`` [H, n_classes]. first_dims
    names the first filter's dims ("[H, v, s]", "[H, v, P, s]"): H, v and s (its last dim; s, if given, is
    checked) are read off it. The other filters' shapes are the caller's to check."""
    state, module_norm = reference_state(model_or_state_dict, owner)
    layers = sorted(int(m.group(1)) for m in map(_FILTER.fullmatch, state) if m)
    if not layers or "readout" not in state:
        raise ValueError(f"rhmfast: {owner} needs the reference {network}'s keys 'hidden.{{l}}.0.filter' "
                         f"(l = 0..L-1) and 'readout', got keys {sorted(state)}")
    L, bias = layers[-1] + 1, "hidden.0.0.bias" in state
    keys = [key for l in range(L) for key in ([f"hidden.{l}.0.filter"]
                                              + ([f"hidden.{l}.0.bias"] if bias else []))] + ["readout"]
    check_keys(state, keys, owner)
    first = state["hidden.0.0.filter"]
    if first.dim() != first_dims.count(",") + 1:
        raise ValueError(f"rhmfast: {owner}: hidden.0.0.filter must have shape {first_dims}, got {list(first.shape)}")
    if s is None:
        s = first.shape[-1]
    elif s != first.shape[-1]:
        raise ValueError(f"rhmfast: {owner}: s={s}, but hidden.0.0.filter has shape {list(first.shape)} "
                         f"({first_dims})")
    readout = state["readout"]
    if readout.dim() != 2:
        raise ValueError(f"rhmfast: {owner}: readout must have shape [H, n_classes], got {list(readout.shape)}")
    return HiddenLayers(state, module_norm, L, bias, first.shape[0], first.shape[1], s, readout.shape[1])


def hidden_state_dict(readout: torch.Tensor, filters: list[torch.Tensor],
                      biases: list[torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The state dict of a reference hCNN or hLCN from its tensors, in its order: ``readout`` (the module's own
    parameter first, as nn.Module.state_dict), then per layer ``hidden.{l}.0.filter`` and, where biases are
    given, ``hidden.{l}.0.bias``."""
    state = {"readout": readout}
    for l, f in enumerate(filters):
        state[f"hidden.{l}.0.filter"] = f
        if biases is not None:
            state[f"hidden.{l}.0.bias"] = biases[l]
    return state
