"""Argument checks shared by every layer of the package: each names the parameter and what it allows."""
from __future__ import annotations

import math
import numbers

import torch


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"rhmfast: {name} must be an int >= 1, got {value!r}")
    return value


def check_choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"rhmfast: {name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """An int in [low, high] (high None: unbounded): a non-int is a TypeError, one out of range a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"rhmfast: {name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"rhmfast: {name} must be {bound}, got {value}")
    return value


def check_real(name: str, value) -> float:
    """A finite real number (not a bool), as a float: a non-number is a TypeError, a non-finite one a
    ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"rhmfast: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"rhmfast: {name} must be a finite number, got {value}")
    return value


def check_seed(name: str, value, optional: bool = True) -> int | None:
    """A generator seed: an int in [0, 2^64 - 1] (torch.Generator's range), or None where optional."""
    if value is None and optional:
        return None
    return check_int(name, value, 0, (1 << 64) - 1)


def check_device(name: str, device) -> torch.device:
    """A device that exists here: a ValueError naming the parameter for strings torch cannot parse and for
    CUDA (or another accelerator) devices this torch build or machine does not have."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"rhmfast: {name} must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"rhmfast: {name}={device!r} needs CUDA, which is not available here "
                             f"(torch.cuda.is_available() is False; torch {torch.__version__}); use device='cpu'")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"rhmfast: {name}={device!r}: CUDA device index must be in [0, {count - 1}], "
                             f"got {parsed.index}")
    elif parsed.type not in ("cpu", "meta"):
        # torch.xpu.is_available(), torch.backends.mps.is_available(), ...; types with neither are refused
        available = (getattr(getattr(torch, parsed.type, None), "is_available", None)
                     or getattr(getattr(torch.backends, parsed.type, None), "is_available", None))
        if available is None or not available():
            raise ValueError(f"rhmfast: {name}={device!r}: device type {parsed.type!r} is not available here")
    return parsed


def _tracing() -> bool:
    """True while torch.compile traces or inside torch.func transforms: data-dependent checks are skipped."""
    from rhmfast._backend import in_func_transform  # here: _backend is heavier than this module
    return torch.compiler.is_compiling() or in_func_transform()


def check_tokens(owner: str, tokens, vocab_size: int, length: int, length_text: str, *, exact: bool = True,
                 values: bool = True) -> None:
    """Token ids at a model's boundary: an integer tensor [B, T] (TypeError otherwise) with T == length
    (exact) or a positive multiple of length, and, with values=True, ids in [0, vocab_size) (ValueError,
    naming the expected and the received values).

    The shape and dtype checks are static, so torch.compile(fullgraph=True) traces them (as guards). The id
    check needs a data-dependent reduction (one aminmax over the batch, one host sync): it runs only in eager
    mode, not while torch.compile traces nor inside torch.func transforms, where an out-of-range id still
    fails in the embedding lookup (an index error, never a read out of bounds)."""
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"rhmfast: {owner} expects token ids as an integer tensor [B, {length_text}], got "
                        f"{type(tokens).__name__}")
    dtype = tokens.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise TypeError(f"rhmfast: {owner} expects integer token ids (uint8, int16, int32 or int64) in "
                        f"[0, v={vocab_size}), got dtype {dtype}")
    if tokens.dim() != 2 or (tokens.shape[1] != length if exact
                             else tokens.shape[1] == 0 or tokens.shape[1] % length != 0):
        want = f"[B, {length_text}]" if exact else f"[B, T] with T a positive multiple of {length_text}"
        raise ValueError(f"rhmfast: {owner} expects token ids of shape {want}, got {list(tokens.shape)}")
    if values and tokens.numel() > 0 and not _tracing():
        lo, hi = (int(t) for t in torch.aminmax(tokens))
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"rhmfast: {owner} expects token ids in [0, v={vocab_size}), got "
                             f"{lo if lo < 0 else hi}")
