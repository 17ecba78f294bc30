"""The layers' float32 CPU GEMMs under either library (csrc/gemm_cpu.cpp): BLAS (at::mm) and oneDNN each
agree with F.conv1d in float64, forward and backward, repeat their bits, and the choice is validated and
reported. Where oneDNN is not usable (no AVX-512, other platforms), its cases skip and say so."""
import os
import subprocess
import sys

import pytest
import torch

import rhmfast
from patchconv_samples import ACTIVATIONS, PATCH_SIZES, SHAPES, TOLERANCE, conv1d_reference, conv_sample
from rhmfast import _backend
from rhmfast.ops.patch_conv import patch_conv
from rhmfast.ops.patch_conv_stack import hcnn_scales, patch_conv_stack


def select_gemm(name):
    """Sends the layers' GEMMs to `name`; skips the test where that library is not usable here."""
    if not _backend.use_extension("cpu"):
        pytest.skip("the layers run the PyTorch reference: no GEMM library to choose")
    rhmfast.set_cpu_gemm(name)
    if rhmfast.backends()["cpu_gemm"] != name:
        rhmfast.set_cpu_gemm("auto")
        assert name == "onednn"
        pytest.skip("torch's oneDNN matmul is not usable for float32 with this torch build or CPU")


@pytest.fixture(params=["blas", "onednn"])
def gemm(request):
    """Runs a test with the layers' float32 GEMMs on one library, then restores the automatic choice."""
    select_gemm(request.param)
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


def test_strided_operands_and_zero_scale(gemm):
    # x channels-first and transposed, the weight a transposed copy: the GEMMs see views, not the
    # contiguous operands the other tests give them. scale = 0 must give the bias alone, and zero
    # gradients of x and W.
    x0, w0, b, _ = conv_sample(8, 6, 24, 20, 2, torch.float32, seed=9, pos_bias=False)
    x = x0.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    w = w0.t().contiguous().t().requires_grad_()
    assert not x.is_contiguous() and not w.is_contiguous()
    for scale in (0.9, 0.0):
        y = patch_conv(x, w, b, patch_size=2, scale=scale, activation="none")
        grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(10))
        grads = torch.autograd.grad(y, (x, w), grad_out)
        doubles = [t.detach().double().requires_grad_() for t in (x0, w0)]
        expected = conv1d_reference(*doubles, b, None, 2, scale, "none")
        torch.testing.assert_close(y.double(), expected.detach(), **TOLERANCE[torch.float32])
        for g, e in zip(grads, torch.autograd.grad(expected, doubles, grad_out.double())):
            torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4)
        if scale == 0.0:
            assert torch.equal(y, b.expand_as(y)) and not grads[0].any() and not grads[1].any()


def test_trunk_is_repeatable_and_agrees_across_libraries():
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 8, (32, 2 ** 5), generator=gen)
    table = torch.randn(2, 8, 48, generator=gen).requires_grad_()
    weights = [torch.randn(48, 96, generator=gen).requires_grad_() for _ in range(4)]

    def step():
        out = patch_conv_stack(tokens, table, weights, patch_size=2, scales=hcnn_scales(table, weights))[-1]
        return [out.detach()] + list(torch.autograd.grad(out.square().sum(), [table] + weights))

    runs = {}
    try:
        for name in ("blas", "onednn"):
            select_gemm(name)
            runs[name] = step()
            for a, b in zip(runs[name], step()):
                assert torch.equal(a, b)  # same library, same threads: same bits
    finally:
        rhmfast.set_cpu_gemm("auto")
    for a, b in zip(runs["blas"], runs["onednn"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_choice_is_validated_and_reported():
    if not _backend.use_extension("cpu"):
        pytest.skip("needs the extension")
    with pytest.raises(ValueError, match="cpu_gemm must be one of"):
        rhmfast.set_cpu_gemm("mkl")
    assert rhmfast.backends()["cpu_gemm"] in ("blas", "onednn")
    with pytest.raises(ValueError, match="cpu_gemm must be 'auto', 'blas' or 'onednn'"):
        _backend._load()["module"].set_cpu_gemm("fast")


def test_disabling_onednn_in_torch_keeps_the_layers_on_blas():
    select_gemm("onednn")
    try:
        torch.backends.mkldnn.enabled = False
        assert rhmfast.backends()["cpu_gemm"] == "blas"
        x, w, b, _ = conv_sample(64, 16, 96, 80, 2, torch.float32, seed=12, pos_bias=False)
        y = patch_conv(x, w, b, patch_size=2, activation="relu")
        torch.testing.assert_close(y.double(), conv1d_reference(x, w, b, None, 2, 1.0, "relu"), rtol=1e-4, atol=1e-4)
        torch.backends.mkldnn.enabled = True
        assert rhmfast.backends()["cpu_gemm"] == "onednn"
    finally:
        torch.backends.mkldnn.enabled = True
        rhmfast.set_cpu_gemm("auto")


def run_with_cpu_gemm(value, tmp_path):
    env = dict(os.environ, RHMFAST_CPU_GEMM=value)
    env.pop("RHMFAST_BACKEND", None)
    return subprocess.run([sys.executable, "-c", "import rhmfast; print(rhmfast.backends()['cpu_gemm'])"],
                          env=env, capture_output=True, text=True, cwd=tmp_path)


def test_environment_sets_the_choice(tmp_path):
    if not _backend.use_extension("cpu"):
        pytest.skip("needs the extension")
    result = run_with_cpu_gemm("blas", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "blas"


def test_bad_environment_value_is_refused(tmp_path):
    result = run_with_cpu_gemm("fastest", tmp_path)
    assert result.returncode != 0 and "RHMFAST_CPU_GEMM must be one of" in result.stderr
