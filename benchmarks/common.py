"""Shared helpers of the benchmark scripts: timing, machine description, result files."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time

import torch

import rhmfast


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_gemm": rhmfast.backends()["cpu_gemm"],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        info["cuda_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


def study_report_start(doc: str, argv=None):
    """A study report's command line (a result store and an output folder), the output folder created, and
    the store's table of every run written there as results.parquet. Returns (args, store records)."""
    import argparse

    from rhmfast.studies.store import ResultStore, collect

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("store")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    collect(args.store, os.path.join(args.out, "results.parquet"))
    return args, list(ResultStore(args.store).records())


def ieee_float32_on_gpu() -> None:
    """float32 candidates compute in float32 on the GPU: cuDNN's convolutions default to TF32 (inputs
    rounded to 10 mantissa bits), which would race the nn.Conv1d baselines against rhmfast's float32
    cuBLAS products at a lower precision. machine() records the settings."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def set_up_device(parser, args) -> str:
    """The benchmark's --device, refused (a parser error) where torch sees no CUDA device; on a GPU, float32 in
    float32 (ieee_float32_on_gpu); --threads torch threads when given. Returns the device."""
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.device == "cuda":
        ieee_float32_on_gpu()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return args.device


def device_tag(device: str) -> str:
    """The device part of a result file's name: "cpu-avx2" / "cpu-avx512" (the vector width moves every
    CPU ratio, so runs on the two kinds of machine are kept apart), or the device type."""
    if device != "cpu":
        return device
    simd = cpu_flags().rsplit(", ", 1)[-1]
    return "cpu-" + ("avx512" if simd == "avx512f" else simd)


def cpu_flags() -> str:
    """CPU family/model and widest vector extension: machines sold under one name (say "AMD EPYC")
    differ in both, and the speed ratios of these benchmarks follow them."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.machine()
    flags = set(fields.get("flags", "").split())
    simd = next((x for x in ("avx512f", "avx2", "avx", "sse4_2") if x in flags), "baseline")
    return f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, {simd}"


def median_time(fn, *, repeats: int = 7, warmup: int = 1, device: str = "cpu") -> float:
    """Median wall time of fn() in seconds (CUDA work is synchronised)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_results(name: str, payload: dict, markdown: str, out_dir: str) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"{name}.json")
    md_path = os.path.join(out_dir, f"{name}.md")
    with open(json_path, "w") as f:
        json.dump(payload, f, indent=1)
    with open(md_path, "w") as f:
        f.write(markdown)
    return json_path, md_path


def interleaved_steps(candidates: dict, rounds: int, steps: int, device: str, warmup: int = 3) -> dict:
    """Per-step times of training-step callables, in interleaved rounds (each runs `steps` steps per round;
    which goes first rotates), so neither a load change on the machine nor the order favours one: per
    candidate the median wall and process-CPU time per step and every round's wall time."""
    # Steps run back to back, as in training; a GPU is synchronised only around each round.
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    wall = {name: [] for name in candidates}
    cpu = {name: [] for name in candidates}
    for step in candidates.values():  # warm-up
        for _ in range(warmup):
            step()
    names = list(candidates)
    for r in range(rounds):
        # Each round starts one candidate further on: with two candidates, each goes first in turn.
        for name in names[r % len(names):] + names[:r % len(names)]:
            step = candidates[name]
            sync()
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                step()
            sync()
            wall[name].append((time.perf_counter() - w0) / steps)
            cpu[name].append((time.process_time() - c0) / steps)
    return {name: dict(wall_s=statistics.median(wall[name]), cpu_s=statistics.median(cpu[name]),
                       wall_all_s=wall[name]) for name in candidates}


def step_timings(lib: dict, fast: dict) -> dict:
    """The row fields of a library-against-rhmfast step timing (two entries of ``interleaved_steps``' result):
    median wall and CPU milliseconds per step of each, the speedups, and every round's wall time."""
    return dict(library_ms_per_step=lib["wall_s"] * 1e3, rhmfast_ms_per_step=fast["wall_s"] * 1e3,
                library_cpu_ms_per_step=lib["cpu_s"] * 1e3, rhmfast_cpu_ms_per_step=fast["cpu_s"] * 1e3,
                speedup_wall=lib["wall_s"] / fast["wall_s"], speedup_cpu=lib["cpu_s"] / fast["cpu_s"],
                wall_rounds_ms=dict(library=[t * 1e3 for t in lib["wall_all_s"]],
                                    rhmfast=[t * 1e3 for t in fast["wall_all_s"]]))
