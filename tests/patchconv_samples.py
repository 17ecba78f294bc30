"""Shared sample inputs, tables and fixtures of the patchwise-layer tests (test_patch_conv.py,
test_token_patch_embed.py, test_patch_conv_stack.py, test_nn.py, test_locally_connected.py)."""
from __future__ import annotations

import pytest
import torch

from rhmfast import _backend
from rhmfast.ops._kernels import op_registered

HAVE_CUDA = torch.cuda.is_available() and _backend.use_extension("cuda")

# Table of what every op must accept, per device (CPU: float32/float64; CUDA adds the half types).
FLOAT_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}
TOKEN_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)
# Agreement with an independent float computation (sums of up to a few hundred products).
TOLERANCE = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
ACTIVATIONS = ("none", "relu", "square")
PATCH_SIZES = (2, 3, 4)

cuda = pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA device and rhmfast's CUDA kernels")

def cuda_cases(test):
    """Marks a test of the CUDA kernels (skipped without them) and runs it for every dtype they take and every
    activation (arguments dtype, activation)."""
    test = pytest.mark.parametrize("activation", ACTIVATIONS)(test)
    test = pytest.mark.parametrize("dtype", FLOAT_DTYPES["cuda"])(test)
    return pytest.mark.cuda(cuda(test))


DEVICE_DTYPES = [pytest.param("cpu", d, id=f"cpu-{str(d)[6:]}") for d in FLOAT_DTYPES["cpu"]] + [
    pytest.param("cuda", d, id=f"cuda-{str(d)[6:]}", marks=[pytest.mark.cuda, cuda]) for d in FLOAT_DTYPES["cuda"]]

# Odd sizes on purpose: batch 1 and primes, channel counts that are not SIMD multiples, one patch.
SHAPES = [  # (batch, patches per row, C_in, C_out)
    (1, 1, 1, 1), (3, 5, 7, 11), (2, 4, 16, 9), (5, 3, 33, 17),
]


@pytest.fixture(params=["extension", "reference"])
def backend(request, monkeypatch):
    """Runs a test through the compiled ops and through the pure-PyTorch reference."""
    state = _backend._load()
    if request.param == "extension":
        if state["module"] is None or not op_registered("patch_conv"):
            pytest.skip("rhmfast._C not built")
        monkeypatch.setitem(state, "forced_reference", False)
    else:
        monkeypatch.setitem(state, "forced_reference", True)
    return request.param


def need_extension():
    if not op_registered("patch_conv"):
        pytest.skip("rhmfast._C not built")


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(shape, dtype, device, gen, requires_grad=False):
    t = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    return t.requires_grad_(requires_grad)


def conv_sample(batch, n_patches, c_in, c_out, s, dtype, device="cpu", seed=0, requires_grad=False,
                bias=True, pos_bias=True):
    """x [B, T, C_in] channels-last, weight [C_out, s*C_in] (k, c order), bias, pos_bias."""
    gen = generator(seed)
    x = randn((batch, n_patches * s, c_in), dtype, device, gen, requires_grad)
    weight = randn((c_out, s * c_in), dtype, device, gen, requires_grad)
    b = randn((c_out,), dtype, device, gen, requires_grad) if bias else None
    pb = randn((n_patches, c_out), dtype, device, gen, requires_grad) if pos_bias else None
    return x, weight, b, pb


def token_sample(batch, n_patches, vocab, c_out, s, token_dtype, dtype, device="cpu", seed=0, requires_grad=False):
    """tokens [B, T] with every value in [0, vocab), table [s, vocab, C_out], bias, pos_bias."""
    gen = generator(seed)
    tokens = torch.randint(0, vocab, (batch, n_patches * s), generator=gen).to(dtype=token_dtype, device=device)
    table = randn((s, vocab, c_out), dtype, device, gen, requires_grad)
    b = randn((c_out,), dtype, device, gen, requires_grad)
    pb = randn((n_patches, c_out), dtype, device, gen, requires_grad)
    return tokens, table, b, pb


def conv1d_reference(x, weight, bias, pos_bias, s, scale, activation):
    """What patch_conv must compute, written with F.conv1d in float64 on channels-first data (differentiable)."""
    c_out = weight.shape[0]
    w = weight.double().reshape(c_out, s, -1).permute(0, 2, 1)  # (k, c) columns -> [C_out, C_in, s]
    z = torch.nn.functional.conv1d(x.double().transpose(1, 2), w, stride=s).transpose(1, 2) * scale
    if bias is not None:
        z = z + bias.double()
    if pos_bias is not None:
        z = z + pos_bias.double()
    return {"none": z, "relu": torch.relu(z), "square": z * z}[activation]


def one_hot_weight(table):
    """The patch_conv weight [C_out, s*v] that the token table [s, v, C_out] stands for."""
    s, v, c_out = table.shape
    return table.reshape(s * v, c_out).t()


def assert_grads_match_float64(op, reference_op, inputs, wanted):
    """The gradients op(*inputs) gives the inputs whose flag in `wanted` is set (only those require grad)
    against those of reference_op on float64 copies of the inputs, for one random output gradient."""
    for t, flag in zip(inputs, wanted):
        t.requires_grad_(bool(flag))
    y = op(*inputs)
    grad_out = torch.randn_like(y)
    grads = torch.autograd.grad(y, [t for t in inputs if t.requires_grad], grad_out)
    doubles = [t.detach().double().requires_grad_(t.requires_grad) for t in inputs]
    expected_grads = torch.autograd.grad(reference_op(*doubles), [t for t in doubles if t.requires_grad],
                                         grad_out.double())
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4)


def assert_refuses_mixed_dtypes_and_devices(op, x, weight, bias):
    """op(x, weight, bias) refuses a weight or a bias of another dtype or device than x's, naming both (devices
    are compared before anything runs, so a meta tensor stands in for a second device)."""
    with pytest.raises(TypeError, match="weight has dtype .*: they must have one dtype"):
        op(x, weight.double(), None)
    with pytest.raises(TypeError, match="bias has dtype"):
        op(x, weight, bias.double())
    with pytest.raises(ValueError, match="weight is on meta, x on cpu: they must be on one device"):
        op(x, weight.to("meta"), None)
    with pytest.raises(ValueError, match="bias is on meta, weight on cpu"):
        op(x, weight, bias.to("meta"))


def assert_within_twice_torch_error(ours, torch_same_precision, exact):
    """Half-type check: rhmfast's error against the float64 result is at most 2x (plus a few ulps of
    slack for zero-error cases) the error of plain PyTorch computing in the same precision."""
    ours_err = (ours.double().cpu() - exact.cpu()).abs().max().item()
    torch_err = (torch_same_precision.double().cpu() - exact.cpu()).abs().max().item()
    slack = 4 * torch.finfo(ours.dtype).eps * exact.abs().max().item()
    assert ours_err <= 2 * torch_err + slack, (ours_err, torch_err)


def assert_cuda_matches_cpu(op, reference_op, inputs64, dtype):
    """op on CUDA in `dtype` against op on the CPU in float64 (float32/float64: 1e-5 relative); half types
    against float64 on the same rounded inputs, within 2x the error of plain PyTorch (`reference_op`)
    computing in that dtype. op(*inputs) must run on the inputs' device. Returns the CUDA inputs, the
    gradients and the output gradient used, for further checks."""
    y64 = op(*inputs64)
    grad_out = torch.randn_like(y64)
    grads64 = torch.autograd.grad(y64, inputs64, grad_out)
    args = [t.detach().to("cuda", dtype).requires_grad_() for t in inputs64]
    grad_cuda = grad_out.to("cuda", dtype)
    y = op(*args)
    grads = torch.autograd.grad(y, args, grad_cuda)
    if dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(y.double().cpu(), y64.detach(), rtol=1e-5, atol=1e-5)
        for g, g64 in zip(grads, grads64):
            torch.testing.assert_close(g.double().cpu(), g64, rtol=1e-5, atol=1e-4)
        return args, grads, grad_cuda
    rounded = [a.detach().double().requires_grad_() for a in args]
    exact = reference_op(*rounded)
    exact_grads = torch.autograd.grad(exact, rounded, grad_cuda.double())
    plain = [a.detach().requires_grad_() for a in args]
    torch_y = reference_op(*plain)
    torch_grads = torch.autograd.grad(torch_y, plain, grad_cuda)
    assert_within_twice_torch_error(y, torch_y, exact)
    for g, tg, e in zip(grads, torch_grads, exact_grads):
        assert_within_twice_torch_error(g, tg, e)
    return args, grads, grad_cuda
