"""Backends: the extension is loaded and used; RHMFAST_BACKEND=torch and a broken extension fall back to
the reference with identical results; the ops work under torch.compile and pass torch.library.opcheck;
CUDA kernels (when present) give the CPU bits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import rhmfast
from rhmfast import _backend

from conftest import MODES, TOKEN_DTYPES, assert_same_result

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One workload, run in this process (extension) and in subprocesses (reference): every public entry
# point that reaches a kernel.
WORKLOAD = textwrap.dedent("""
    import torch
    import rhmfast

    def workload():
        out = {}
        for k, (args, kw) in enumerate([((6, 2, 2, 3), dict(seed=4)),
                                        ((5, 3, 3, 2), dict(n_classes=7, seed=9, rules="pcsl-2023")),
                                        ((4, 2, 2, 3), dict(seed=1, rules="first-token-uniform"))]):
            g = rhmfast.RHM(*args, **kw)
            for mode in ("iid", "index"):
                x, y, tree = g.sample(37, seed=(1 << 63) + 5, start=3, mode=mode, return_tree=True)
                out[f"{k}-{mode}-x"], out[f"{k}-{mode}-y"] = x, y
                for level, t in enumerate(tree):
                    out[f"{k}-{mode}-tree{level}"] = t
            out[f"{k}-decode"] = g.decode(torch.arange(0, g.pmax, 7), dtype=torch.int32)[0]
        counter = torch.arange(64, dtype=torch.int64).reshape(16, 4)
        out["philox"] = rhmfast.philox_uniform(counter, 12345)
        out["philox-bounded"] = rhmfast.philox_uniform(counter, 12345, (1 << 31) + 1)
        return out
""")


def run_python(code: str, env_extra: dict, tmp_path) -> dict:
    """Run code in a fresh interpreter (repo root as cwd); it writes tensors to $OUT and a JSON report
    on its last stdout line. Returns (report, tensors)."""
    env = {k: v for k, v in os.environ.items() if k != "RHMFAST_BACKEND"}
    env.update(env_extra, OUT=str(tmp_path / "out.pt"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report, torch.load(tmp_path / "out.pt")


def extension_results() -> dict:
    scope: dict = {}
    exec(WORKLOAD, scope)
    return scope["workload"]()


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_backends_reports_the_extension():
    """backends(): the compiled extension is loaded and active, built for this torch, with OpenMP."""
    info = rhmfast.backends()
    assert info["extension"] is True and info["extension_error"] is None
    assert info["active"] == "extension"
    assert isinstance(info["rhmfast"], str) and isinstance(info["torch"], str)
    assert torch.__version__.startswith(info["extension_built_with_torch"])
    assert info["openmp"] is True
    assert isinstance(info["cuda_device"], bool) and info["cpu_simd"] in ("scalar", "avx2", "avx512")
    for threads in (1, 2):  # the thread count torch uses now, not one read at import
        torch.set_num_threads(threads)
        assert rhmfast.backends()["threads"] == threads
    assert _backend.use_extension() and _backend.use_extension("cpu")
    for op in ("rhm_sample", "rhm_decode", "philox_uniform"):
        assert hasattr(torch.ops.rhmfast, op)


def test_backend_variable_is_validated(monkeypatch):
    """RHMFAST_BACKEND must be torch, extension or unset (read on first use; state reset here)."""
    monkeypatch.setattr(_backend, "_state", {})
    monkeypatch.setenv("RHMFAST_BACKEND", "cuda-please")
    with pytest.raises(ValueError, match="RHMFAST_BACKEND"):
        rhmfast.backends()
    monkeypatch.setattr(_backend, "_state", {})
    monkeypatch.setenv("RHMFAST_BACKEND", "extension")
    assert rhmfast.backends()["active"] == "extension"


def test_forced_reference_in_process(monkeypatch):
    """With RHMFAST_BACKEND=torch (fresh backend state) every entry point runs the reference and gives
    the extension's bits."""
    calls = {op: 0 for op in ("rhm_sample", "rhm_decode", "philox_uniform")}
    for op in calls:
        def spy(*args, real=getattr(torch.ops.rhmfast, op), op=op):
            calls[op] += 1
            return real(*args)
        monkeypatch.setattr(torch.ops.rhmfast, op, spy, raising=False)
    expected = extension_results()
    assert all(count > 0 for count in calls.values()), calls  # the spies see the extension's calls
    calls.update({op: 0 for op in calls})
    monkeypatch.setattr(_backend, "_state", {})
    monkeypatch.setenv("RHMFAST_BACKEND", "torch")
    assert rhmfast.backends()["active"] == "torch-reference"
    assert not _backend.use_extension("cpu")
    assert_same_tensors(extension_results(), expected)
    assert calls == {op: 0 for op in calls}


def test_forced_reference_subprocess(tmp_path):
    """A fresh interpreter with RHMFAST_BACKEND=torch uses the reference (no warning) and gives
    identical samples to the extension."""
    code = textwrap.dedent("""
        import warnings
        recording = warnings.catch_warnings(record=True)
        caught = recording.__enter__()
        warnings.simplefilter("always")
    """) + WORKLOAD + textwrap.dedent("""
        import json, os
        result = workload()
        recording.__exit__(None, None, None)
        torch.save(result, os.environ["OUT"])
        info = rhmfast.backends()
        print(json.dumps(dict(active=info["active"], extension=info["extension"],
                              warnings=[str(w.message) for w in caught if "rhmfast" in str(w.message)])))
    """)
    report, tensors = run_python(code, {"RHMFAST_BACKEND": "torch"}, tmp_path)
    assert report["active"] == "torch-reference"
    assert report["warnings"] == []
    assert_same_tensors(tensors, extension_results())


def test_broken_extension_falls_back_with_one_warning(tmp_path):
    """When rhmfast._C cannot be imported (a meta-path hook makes it fail), the package warns exactly
    once (RuntimeWarning naming the error), reports the reference as active, and samples correctly."""
    code = textwrap.dedent("""
        import importlib.abc, sys, warnings

        class BreakExtension(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "rhmfast._C":
                    raise ImportError("simulated broken build of rhmfast._C")
                return None

        sys.meta_path.insert(0, BreakExtension())
        recording = warnings.catch_warnings(record=True)
        caught = recording.__enter__()  # from before `import rhmfast` to the end
        warnings.simplefilter("always")
    """) + WORKLOAD + textwrap.dedent("""
        import json, os
        result = workload()
        result2 = workload()
        info = rhmfast.backends()
        recording.__exit__(None, None, None)
        torch.save(result, os.environ["OUT"])
        mine = [w for w in caught if "rhmfast" in str(w.message)]
        print(json.dumps(dict(active=info["active"], extension=info["extension"], error=info["extension_error"],
                              categories=[w.category.__name__ for w in mine],
                              messages=[str(w.message) for w in mine],
                              stable=all(torch.equal(result[k], result2[k]) for k in result),
                              loaded="rhmfast._C" in sys.modules)))
    """)
    report, tensors = run_python(code, {}, tmp_path)
    assert report["extension"] is False and report["active"] == "torch-reference"
    assert "simulated broken build" in report["error"]
    assert report["categories"] == ["RuntimeWarning"], report["messages"]
    assert "simulated broken build" in report["messages"][0]
    assert report["stable"] and not report["loaded"]
    assert_same_tensors(tensors, extension_results())


# ---- torch.compile and opcheck -----------------------------------------------------------------

def _compiled_matches_eager(backend: str):
    torch._dynamo.reset()
    table = rhmfast.RHM(6, 2, 2, 3, seed=1).table()

    def f(rules, datum):
        tokens, labels, tree = torch.ops.rhmfast.rhm_sample(rules, 6, 9, -5, 4, "iid", torch.int64, True)
        dec, _, _ = torch.ops.rhmfast.rhm_decode(rules, datum, 6, torch.int32, False)
        return tokens * 2 + 1, labels, tree[1].sum(1), dec

    datum = torch.tensor([0, 5, 767])
    eager = f(table, datum)
    compiled = torch.compile(f, fullgraph=True, backend=backend)(table, datum)
    for a, b in zip(eager, compiled):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert eager[0].shape == (9, 8)


def test_torch_compile_fullgraph_aot_eager():
    """torch.compile(fullgraph=True) traces through the ops (fake kernels) and gives the eager result."""
    _compiled_matches_eager("aot_eager")


@pytest.mark.slow
def test_torch_compile_fullgraph_inductor():
    """The same with the default (inductor) backend, which generates and compiles C++ code."""
    _compiled_matches_eager("inductor")


def _opcheck_cases():
    g = rhmfast.RHM(6, 2, 2, 3, seed=1)
    big = rhmfast.RHM(5, 3, 3, 2, n_classes=7, seed=2, rules="pcsl-2023")
    # c3 < 2^8: see test_philox.py::test_bounded_mode_terminates_for_any_counter for larger c3
    counter = torch.tensor([[0, 0, 0, 0], [1, 2, 3, 4], [0xFFFFFFFF] * 3 + [0xFF]], dtype=torch.int64)
    return [
        ("rhm_sample", (g.table(), 6, 5, 3, 2, "iid", torch.uint8, True)),
        ("rhm_sample", (g.table(), 6, 7, -1, 0, "index", torch.int64, False)),
        ("rhm_sample", (big.table(), 7, 0, 11, 0, "iid", torch.int16, True)),
        ("rhm_decode", (g.table(), torch.tensor([0, 17, 767]), 6, torch.int32, True)),
        ("rhm_decode", (big.table(), torch.tensor([5, 3, 1]), 7, torch.uint8, False)),
        ("philox_uniform", (counter, 7, 0)),
        ("philox_uniform", (counter, -3, (1 << 31) + 1)),
    ]


@pytest.mark.parametrize("case", range(7))
def test_opcheck(case):
    """torch.library.opcheck passes all its default checks (schema, fake tensor, autograd registration
    -- the outputs are integer tensors, so no autograd formula is needed -- and AOT dispatch)."""
    name, args = _opcheck_cases()[case]
    result = torch.library.opcheck(getattr(torch.ops.rhmfast, name).default, args)
    assert set(result) >= {"test_schema", "test_faketensor", "test_autograd_registration"}
    assert all(v == "SUCCESS" for v in result.values()), result


def test_fake_kernels_give_shapes_and_dtypes():
    """Under FakeTensorMode the ops return outputs of the real shapes and dtypes without running."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    g = rhmfast.RHM(6, 2, 2, 3, seed=1)
    real = torch.ops.rhmfast.rhm_sample(g.table(), 6, 4, 0, 0, "iid", torch.int16, True)
    with FakeTensorMode() as mode:
        table = mode.from_tensor(g.table())
        tokens, labels, tree = torch.ops.rhmfast.rhm_sample(table, 6, 4, 0, 0, "iid", torch.int16, True)
        dec = torch.ops.rhmfast.rhm_decode(table, mode.from_tensor(torch.arange(3)), 6, torch.uint8, False)
        words = torch.ops.rhmfast.philox_uniform(mode.from_tensor(torch.zeros(5, 4, dtype=torch.int64)), 0, 0)
    assert tokens.shape == real[0].shape and tokens.dtype == real[0].dtype
    assert labels.shape == real[1].shape and labels.dtype == torch.int64
    assert [t.shape for t in tree] == [t.shape for t in real[2]]
    assert dec[0].shape == (3, 8) and dec[0].dtype == torch.uint8 and dec[2] == []
    assert words.shape == (5, 4) and words.dtype == torch.int64


# ---- CUDA ----------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", TOKEN_DTYPES)
def test_cuda_sample_matches_cpu(mode, dtype, rng):
    """CUDA kernel bits equal CPU bits for iid and index sampling, every dtype, with the tree."""
    for sampler in ("pcsl", "pcsl-2023", "first-token-uniform"):
        g = rhmfast.RHM(9, 3, 2, 4, n_classes=9, seed=rng.randrange(1 << 30), rules=sampler)
        seed, start = rng.randrange(1 << 64), rng.randrange(1000)
        for n in (0, 1, 777):
            cpu = g.sample(n, seed=seed, start=start, mode=mode, dtype=dtype, return_tree=True)
            gpu = g.sample(n, seed=seed, start=start, mode=mode, dtype=dtype, return_tree=True, device="cuda")
            assert gpu[0].is_cuda and gpu[1].is_cuda
            assert_same_result((gpu[0].cpu(), gpu[1].cpu(), [t.cpu() for t in gpu[2]]), cpu)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", TOKEN_DTYPES)
def test_cuda_decode_matches_cpu(dtype, rng):
    """CUDA decode equals CPU decode for random datum numbers, every dtype, with the tree."""
    g = rhmfast.RHM(9, 3, 3, 3, seed=rng.randrange(1 << 30))
    datum = torch.tensor([0, g.pmax - 1] + [rng.randrange(g.pmax) for _ in range(500)])
    cpu = g.decode(datum, dtype=dtype, return_tree=True)
    gpu = g.decode(datum.cuda(), dtype=dtype, return_tree=True, device="cuda")
    assert_same_result((gpu[0].cpu(), gpu[1].cpu(), [t.cpu() for t in gpu[2]]), cpu)


@pytest.mark.cuda
@pytest.mark.parametrize("bound", [0, 7, (1 << 31) + 1])
def test_cuda_philox_uniform_matches_cpu(bound):
    """philox_uniform on a CUDA counter (the reference there: the extension's kernel is CPU-only) gives
    the CPU bits, on the counter's device."""
    counter = torch.arange(4 * 999, dtype=torch.int64).reshape(999, 4)
    cpu = rhmfast.philox_uniform(counter, (1 << 63) + 5, bound)
    gpu = rhmfast.philox_uniform(counter.cuda(), (1 << 63) + 5, bound)
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)
