"""Fixtures of the kernel benchmarks (test_kernels_*.py): the `device` parameter and `bench`, which times
one provider with pytest-benchmark under a group naming op, shape, mode and device, and records the
work done per call and, when timings exist, its rates in extra_info."""
from __future__ import annotations

import os
import sys

import pytest
import torch

# Like the bench_*.py scripts: `common` sits next to this file, whatever pytest's import mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ieee_float32_on_gpu, machine  # noqa: E402

import rhmfast  # noqa: E402


def pytest_configure(config):
    ieee_float32_on_gpu()  # every GPU case in float32 proper (machine_info records the settings)


def pytest_benchmark_update_machine_info(config, machine_info):
    """What moves these timings besides the code: CPU model and vector width, torch and its threads, the
    GEMM library of rhmfast's layers, the GPU and its TF32 settings. Without the date (the run has its
    own), so that runs on one machine compare without a machine_info warning."""
    info = {k: v for k, v in machine().items() if k != "date"}
    machine_info["rhmfast"] = {**info, "backends": rhmfast.backends()}


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request) -> str:
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        if not rhmfast.backends()["cuda_kernels"]:
            pytest.skip("rhmfast was built without its CUDA kernels")
    return request.param


@pytest.fixture
def bench(device, benchmark):  # device first: a skipped device never sets up a benchmark
    """bench(fn, group=..., provider=..., samples=n, nbytes=..., flops=...) times fn(). On a GPU fn is
    followed by a synchronisation inside the timed call, so that the time is the kernels', not the
    launches'. With --benchmark-disable fn runs once and no rate is recorded (there are no stats)."""
    def run(fn, *, group: str, provider: str, samples: int, nbytes: int | None = None, flops: int | None = None):
        benchmark.group = f"{group} {device}"
        info = benchmark.extra_info
        info.update(provider=provider, device=device, samples=samples)
        if nbytes is not None:
            info["bytes"] = nbytes
        if flops is not None:
            info["flops"] = flops
        if device == "cuda":
            def timed():
                fn()
                torch.cuda.synchronize()
            torch.cuda.synchronize()
        else:
            timed = fn
        benchmark(timed)
        if benchmark.enabled and benchmark.stats:
            median = benchmark.stats.stats.median
            info["samples_per_s"] = samples / median
            if nbytes is not None:
                info["gb_per_s"] = nbytes / median / 1e9
            if flops is not None:
                info["gflop_per_s"] = flops / median / 1e9
    return run
