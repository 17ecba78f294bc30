"""Whether a patchwise-layer call runs the compiled op or the pure-PyTorch reference."""
from __future__ import annotations

import torch

from rhmfast import _backend


def op_registered(name: str) -> bool:
    """True when rhmfast._C loaded and defines torch.ops.rhmfast.<name> (fake/autograd go on it)."""
    return _backend._load()["module"] is not None and hasattr(torch.ops.rhmfast, name)


def use_kernel(name: str, tensor: torch.Tensor) -> bool:
    return _backend.use_extension(tensor.device) and op_registered(name)


def forbid_double_backward(backward_op: str) -> None:
    """Registers an autograd kernel on a backward op that raises when differentiated, instead of the
    dispatcher's fallback that would silently return wrong (zero) second derivatives."""

    def _raise(ctx, *grads):
        raise RuntimeError(f"rhmfast: {backward_op} is not differentiable (double backward is not supported)")

    torch.library.register_autograd(backward_op, _raise, setup_context=lambda ctx, inputs, output: None)
