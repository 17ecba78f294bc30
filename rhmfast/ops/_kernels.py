"""Whether a patchwise-layer call runs the compiled op or the pure-PyTorch reference."""
from __future__ import annotations

import torch

from rhmfast import _backend


def op_registered(name: str) -> bool:
    """True when rhmfast._C loaded and defines torch.ops.rhmfast.<name> (fake/autograd go on it)."""
    return _backend._load()["module"] is not None and hasattr(torch.ops.rhmfast, name)


def use_kernel(name: str, tensor: torch.Tensor) -> bool:
    return _backend.use_extension(tensor.device) and op_registered(name)
