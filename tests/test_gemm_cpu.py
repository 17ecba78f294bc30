"""The layers' float32 CPU GEMMs under either library (csrc/gemm_cpu.cpp): BLAS (at::mm) and oneDNN each
agree with F.conv1d in float64, forward and backward, repeat their bits, and the choice is validated and
reported."""
import pytest
import torch

import rhmfast
from patchconv_samples import ACTIVATIONS, PATCH_SIZES, SHAPES, TOLERANCE, conv1d_reference, conv_sample, need_extension
from rhmfast.ops.patch_conv import patch_conv
from rhmfast.ops.patch_conv_stack import hcnn_scales, patch_conv_stack


@pytest.fixture(params=["blas", "onednn"])
def gemm(request):
    """Runs a test with the layers' float32 GEMMs on one library, then restores the automatic choice."""
    need_extension()
    rhmfast.set_cpu_gemm(request.param)
    if rhmfast.backends()["cpu_gemm"] != request.param:
        rhmfast.set_cpu_gemm("auto")
        assert request.param == "onednn"
        pytest.skip("torch's oneDNN matmul is not usable for float32 with this torch build or CPU")
    yield request.param
    rhmfast.set_cpu_gemm("auto")


@pytest.mark.parametrize("s", PATCH_SIZES)
def test_forward_matches_conv1d(gemm, s):
    # The last shape is big enough for the libraries' blocked kernels; its sums of s*96 products get a
    # tolerance that grows with their length.
    for seed, shape in enumerate(SHAPES + [(64, 16, 96, 80)]):
        tolerance = TOLERANCE[torch.float32] if shape in SHAPES else dict(rtol=1e-4, atol=1e-4)
        for activation in ACTIVATIONS:
            x, w, b, pb = conv_sample(*shape, s, torch.float32, seed=100 + seed, pos_bias=seed % 2 == 0)
            y = patch_conv(x, w, b, pb, patch_size=s, scale=0.7, activation=activation)
            assert y.shape == (shape[0], shape[1], shape[3]) and y.is_contiguous()
            torch.testing.assert_close(y.double(), conv1d_reference(x, w, b, pb, s, 0.7, activation), **tolerance)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backward_matches_conv1d(gemm, activation):
    x, w, b, pb = conv_sample(16, 12, 40, 24, 3, torch.float32, seed=7, requires_grad=True)
    y = patch_conv(x, w, b, pb, patch_size=3, scale=0.3, activation=activation)
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(8))
    grads = torch.autograd.grad(y, (x, w, b, pb), grad_out)
    doubles = [t.detach().double().requires_grad_() for t in (x, w, b, pb)]
    expected = torch.autograd.grad(conv1d_reference(*doubles, 3, 0.3, activation), doubles, grad_out.double())
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4)


def test_trunk_is_repeatable_and_agrees_across_libraries(gemm):
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 8, (32, 2 ** 5), generator=gen)
    table = torch.randn(2, 8, 48, generator=gen).requires_grad_()
    weights = [torch.randn(48, 96, generator=gen).requires_grad_() for _ in range(4)]

    def step():
        out = patch_conv_stack(tokens, table, weights, patch_size=2, scales=hcnn_scales(table, weights))[-1]
        return [out.detach()] + list(torch.autograd.grad(out.square().sum(), [table] + weights))

    first, second = step(), step()
    for a, b in zip(first, second):
        assert torch.equal(a, b)  # same library, same threads: same bits
    rhmfast.set_cpu_gemm("onednn" if gemm == "blas" else "blas")
    for a, b in zip(first, step()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_choice_is_validated_and_reported():
    need_extension()
    with pytest.raises(ValueError, match="cpu_gemm must be one of"):
        rhmfast.set_cpu_gemm("mkl")
    assert rhmfast.backends()["cpu_gemm"] in ("blas", "onednn")
    with pytest.raises(ValueError, match="cpu_gemm must be 'auto', 'blas' or 'onednn'"):
        rhmfast._backend._load()["module"].set_cpu_gemm("fast")


def test_bad_environment_value_is_refused(tmp_path):
    import subprocess
    import sys
    env = {"RHMFAST_CPU_GEMM": "fastest", "PATH": ""}
    result = subprocess.run([sys.executable, "-c", "import rhmfast; rhmfast.backends()"], env=env,
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0 and "RHMFAST_CPU_GEMM must be one of" in result.stderr
