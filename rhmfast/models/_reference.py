"""Reading the 2024 reference library's models (random-hierarchy-model: ``models/cnn.py`` hCNN,
``models/fcn.py`` MLP and Perceptron): their parameters, from the module or from its state dict."""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
from torch import nn

NORMS = ("std", "mf")


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
