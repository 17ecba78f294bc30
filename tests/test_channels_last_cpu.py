"""Channels-first inputs and gradients of the CPU layers (csrc/channels_last_cpu.cpp):
PatchConv1d(layout="ncl") hands patch_conv x.transpose(1, 2) of a [B, C, T] tensor and gets its output
gradient the same way (TokenPatchEmbedding its gradient); the kernels copy those channels-last with
blocked transposes. The copies must hold exactly what Tensor.contiguous() holds, for every shape (tile
edges, one channel, slices, strided batches)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from patchconv_samples import generator, need_extension
from rhmfast.nn import PatchConv1d, TokenPatchEmbedding
from rhmfast.ops.patch_conv import patch_conv

# (B, C, T): full 8x8 tiles, ragged edges on both sides, a single channel or position, a long strip, and
# one above the 4 MiB at which outputs get their own mapping.
SHAPES = [(4, 16, 32), (3, 17, 23), (2, 1, 40), (5, 9, 1), (1, 70, 333), (37, 8, 16), (300, 64, 64)]


def channels_first(shape, dtype, seed, extra_length=0, batch_step=1):
    """A [B, C, T] tensor, possibly a slice of a longer one or every batch_step-th batch of a bigger one."""
    B, C, T = shape
    full = torch.randn((B * batch_step, C, T + extra_length), generator=generator(seed), dtype=torch.float64)
    return full.to(dtype)[::batch_step, :, :T]


@pytest.fixture(autouse=True)
def extension():
    need_extension()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("extra_length,batch_step", [(0, 1), (5, 1), (0, 2)])
def test_forward_reads_channels_first_input_exactly(shape, dtype, extra_length, batch_step):
    """An identity weight (patch size 1) returns the channels-last input itself, bit for bit."""
    x = channels_first(shape, dtype, seed=sum(shape) + extra_length, extra_length=extra_length,
                       batch_step=batch_step)
    view = x.transpose(1, 2)  # [B, T, C], each batch a column-major matrix
    assert view.is_contiguous() == (min(shape[1:]) == 1 and extra_length == 0 and batch_step == 1)
    y = patch_conv(view, torch.eye(shape[1], dtype=dtype), patch_size=1)
    assert y.is_contiguous()
    assert torch.equal(y, view.contiguous())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_reads_channels_first_gradient_exactly(shape, dtype):
    """With an identity weight and no activation, grad_x is the output gradient itself."""
    B, C, T = shape
    x = torch.randn((B, T, C), generator=generator(1), dtype=dtype, requires_grad=True)
    grad = channels_first(shape, dtype, seed=2).transpose(1, 2)
    (grad_x,) = torch.autograd.grad(patch_conv(x, torch.eye(C, dtype=dtype), patch_size=1), x, grad)
    assert torch.equal(grad_x, grad.contiguous())


ACTIVATIONS = {"relu": torch.relu, "square": torch.square}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("s", [2, 3])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_ncl_layer_matches_conv1d(s, dtype, activation):
    """PatchConv1d(layout="ncl") on a channels-first input whose length leaves a remainder: output and
    every gradient agree with nn.Conv1d + the activation (the weight gradient, and square's recomputed
    pre-activation, read the transposed copy too)."""
    torch.manual_seed(s)
    conv = torch.nn.Conv1d(19, 13, s, stride=s, dtype=dtype)
    layer = PatchConv1d.from_conv1d(conv, activation=activation)
    x = torch.randn(6, 19, 11 * s + 1, dtype=dtype, requires_grad=True)
    grad = torch.randn(6, 13, 11, dtype=dtype)
    ours = layer(x)
    ours_grads = torch.autograd.grad(ours, [x, layer.weight, layer.bias], grad)
    theirs = ACTIVATIONS[activation](conv(x))
    theirs_grads = torch.autograd.grad(theirs, [x, conv.weight, conv.bias], grad)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, theirs, **tol)
    for a, b in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, **tol)


def test_other_layouts_still_work():
    """A layout the transposes do not take (a permuted batch axis) goes through Tensor.contiguous."""
    x = torch.randn(8, 3, 10, generator=generator(3)).permute(1, 0, 2)  # [3, 8, 10], batch not outermost
    weight = torch.randn(5, 20, generator=generator(4))
    y = patch_conv(x, weight, patch_size=2)
    ref = F.linear(x.reshape(3, 4, 20), weight)
    torch.testing.assert_close(y, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_token_layer_reads_channels_first_gradient(dtype):
    """TokenPatchEmbedding(layout="ncl") gets its output gradient channels-first; its table gradient
    equals the one from the same gradient made contiguous first."""
    layer = TokenPatchEmbedding(11, 21, 3, activation="relu", layout="ncl", dtype=dtype)
    tokens = torch.randint(0, 11, (7, 3 * 13), generator=generator(5))
    grad = channels_first((7, 21, 13), dtype, seed=6)  # [B, C, T_out], as a channels-first consumer sends it
    out = layer(tokens)
    assert out.shape == grad.shape
    ours = torch.autograd.grad(out, list(layer.parameters()), grad)
    channels_last = grad.transpose(1, 2).contiguous().transpose(1, 2)  # same values, no copy needed
    contiguous = torch.autograd.grad(layer(tokens), list(layer.parameters()), channels_last)
    for a, b in zip(ours, contiguous):
        assert torch.equal(a, b)


def test_element_wise_path_copies_exactly(tmp_path):
    """RHMFAST_CPU_SIMD=scalar selects the element-wise transposes (what CPUs without AVX2 run): the
    exactness tests above pass on that path too, in a process of its own (the choice is made once)."""
    env = dict(os.environ, RHMFAST_CPU_SIMD="scalar", RHMFAST_BACKEND="extension")
    tests = [f"{__file__}::test_forward_reads_channels_first_input_exactly",
             f"{__file__}::test_backward_reads_channels_first_gradient_exactly"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=os.path.dirname(__file__), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
