"""Which implementation runs: the compiled extension (rhmfast._C) or the pure-PyTorch reference.

The extension registers its ops under ``torch.ops.rhmfast``. If it is missing or fails to load, every
public function still works through the reference implementation, after one warning. Setting the
environment variable ``RHMFAST_BACKEND=torch`` forces the reference (useful to compare or debug).
"""
from __future__ import annotations

import importlib
import os
import warnings

import torch

_state: dict = {}
CPU_GEMMS = ("auto", "blas", "onednn")


def _load() -> dict:
    if _state:
        return _state
    forced = os.environ.get("RHMFAST_BACKEND", "").strip().lower()
    if forced not in ("", "auto", "torch", "extension"):
        raise ValueError(f"RHMFAST_BACKEND must be 'torch', 'extension' or unset, got {forced!r}")
    gemm = os.environ.get("RHMFAST_CPU_GEMM", "")
    if gemm not in ("",) + CPU_GEMMS:
        raise ValueError(f"RHMFAST_CPU_GEMM must be one of {CPU_GEMMS} or unset, got {gemm!r}")
    module, error = None, None
    try:
        module = importlib.import_module("rhmfast._C")
    except Exception as exc:  # any failure to load means: fall back, and say why
        error = f"{type(exc).__name__}: {exc}"
    if forced == "extension" and module is None:
        raise ImportError(f"RHMFAST_BACKEND=extension but rhmfast._C failed to load ({error})")
    _state.update(module=module, error=error, forced_reference=forced == "torch")
    if module is None and forced != "torch":
        warnings.warn(
            f"rhmfast: the compiled extension is not available ({error}); using the pure-PyTorch "
            "reference implementation (correct, but much slower). Rebuild with "
            "`pip install --no-build-isolation -e .`",
            RuntimeWarning,
            stacklevel=3,
        )
    return _state


def extension_loaded() -> bool:
    """True when rhmfast._C loaded, so its ops exist under torch.ops.rhmfast (even if not in use)."""
    return _load()["module"] is not None


def use_extension(device: torch.device | str | None = None) -> bool:
    """True when ops on ``device`` should run through the compiled kernels."""
    state = _load()
    if state["module"] is None or state["forced_reference"]:
        return False
    if device is not None and torch.device(device).type == "cuda":
        return bool(state["module"].with_cuda)
    return True


def in_func_transform() -> bool:
    """True inside torch.func transforms (grad, vmap, jacrev, ...). The layers then run the reference:
    the transforms cannot go through the ops' C++ autograd, and they support every op it uses."""
    return not torch.compiler.is_compiling() and torch._C._functorch.peek_interpreter_stack() is not None


def backends() -> dict:
    """What is available: the extension, its CUDA kernels, OpenMP, versions, and what is in use."""
    state = _load()
    module = state["module"]
    from rhmfast import __version__

    return {
        "rhmfast": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "extension": module is not None,
        "extension_error": state["error"],
        "extension_built_with_torch": getattr(module, "torch_version", None),
        "cuda_kernels": bool(module is not None and module.with_cuda),
        "cuda_device": torch.cuda.is_available(),
        "openmp": bool(module is not None and module.openmp),
        "cpu_simd": module.cpu_simd() if module is not None else None,
        "cpu_gemm": module.cpu_gemm() if module is not None else None,
        "threads": torch.get_num_threads(),
        "active": "torch-reference" if (module is None or state["forced_reference"]) else "extension",
    }


def set_cpu_gemm(name: str) -> None:
    """Choose the library for the layers' float32 CPU GEMMs: "blas" (torch's at::mm), "onednn", or "auto"
    (oneDNN for products of 2^24 multiply-adds or more on non-Intel x86-64 CPUs with AVX-512, where MKL
    measured slower; else BLAS). "onednn" sends every float32 product there, where oneDNN is usable
    (Linux x86-64, a CPU torch runs its float32 oneDNN matmul on, torch.backends.mkldnn enabled), and
    leaves them on BLAS elsewhere; backends()["cpu_gemm"] says which library large products get. The
    default comes from RHMFAST_CPU_GEMM. The choice is global to the process. Without the extension the
    layers run the reference and this changes nothing."""
    if name not in CPU_GEMMS:
        raise ValueError(f"rhmfast: cpu_gemm must be one of {CPU_GEMMS}, got {name!r}")
    module = _load()["module"]
    if module is not None:
        module.set_cpu_gemm(name)
