"""Whether a patchwise-layer call runs the compiled op or the pure-PyTorch reference."""
from __future__ import annotations

import torch

from rhmfast import _backend


def op_registered(name: str) -> bool:
    """True when rhmfast._C loaded and defines torch.ops.rhmfast.<name> (fake/autograd go on it)."""
    return _backend._load()["module"] is not None and hasattr(torch.ops.rhmfast, name)


def use_kernel(registered: bool, tensor: torch.Tensor) -> bool:
    """registered: op_registered(...) of the op, looked up once at import (it is not free per call).
    Inside torch.func transforms the reference runs (see _backend.in_func_transform)."""
    return registered and _backend.use_extension(tensor.device) and not _backend.in_func_transform()

