"""pytest-benchmark timings of the patchwise layers, forward ("fwd", under no_grad) and forward + backward
("fwd+bwd", with a dense output gradient), one table per shape and mode (run with
--benchmark-group-by=group). The shapes are those of bench_patchconv.py at medium size.

patch_conv (x [B, T, C] channels-last, weight [C, s*C], bias, ReLU), providers:
- rhmfast: `rhmfast.ops.patch_conv.patch_conv` on the channels-last input;
- conv1d_ncl: `nn.Conv1d(C, C, kernel_size=s, stride=s)` on the channels-first input [B, C, T];
- linear_nlc: `F.linear` on the channels-last view [B, T/s, s*C].

token_patch_embed (token ids [B, T] int64, table [s, v, C], bias, ReLU), providers:
- rhmfast: `rhmfast.ops.token_patch_embed.token_patch_embed`;
- onehot_conv1d: `F.one_hot(tokens).float()` channels-first, then `nn.Conv1d(v, C, s, stride=s)`;
- embedding_bag: `F.embedding_bag` (sum) of the s rows of a table [s*v, C] that a patch selects.

patch_conv_stack, forward + backward of a whole hCNN trunk (v=32, s=2, L=6: a token layer and five
patch layers, no biases, ReLU, 1/sqrt(fan-in) scales), providers:
- rhmfast: `rhmfast.ops.patch_conv_stack.patch_conv_stack(..., scales="hcnn")`;
- reference: the pure-PyTorch reference trunk `rhmfast.reference.patch_conv_stack.patch_conv_stack`;
- conv1d_onehot: an nn.Sequential of `nn.Conv1d` + ReLU on the one-hot input, scales folded into the
  weights (the same function).

Every provider holds its parameters in its own layout, made from the same values. Before timing, its
output, and in fwd+bwd mode the gradients of its input and parameters, are checked against the
reference in rhmfast.reference.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rhmfast.ops.patch_conv import patch_conv
from rhmfast.ops.patch_conv_stack import hcnn_scales, patch_conv_stack
from rhmfast.ops.token_patch_embed import token_patch_embed
from rhmfast.reference import patch_conv as patch_conv_ref
from rhmfast.reference import patch_conv_stack as patch_conv_stack_ref
from rhmfast.reference import token_patch_embed as token_patch_embed_ref

MODES = ["fwd", "fwd+bwd"]
BATCH, T_OUT = 256, 16
LAYER_SHAPES = [(64, 2), (64, 3), (128, 2), (128, 3)]  # (C, s)
VOCAB = 32
TRUNK = {"v": 32, "s": 2, "L": 6, "batch": 128}
TRUNK_WIDTHS = [64, 128]
# Outputs: float32 sums of up to s*C products against the same sums in another order, element by element.
OUTPUT_TOL = {"rtol": 1e-4, "atol": 1e-4}
# Gradients, as the error's norm over the gradient's: a weight gradient sums over B*T/s rows, so an
# element near zero can be off by far more than its own size.
GRAD_TOL = 1e-4
# The trunk's: a ReLU input within rounding of zero in an inner layer can fall on the other side of it in
# one provider (its output gradient is dense there), which moves one row's contribution to the gradients
# of the layers below; 1e-2 still fails any wrong formula.
TRUNK_GRAD_TOL = 1e-2


def shape_id(shape) -> str:
    return "C{}_s{}".format(*shape)


@dataclass
class Candidate:
    """One provider: its timed forward, a view of its output in the reference's layout [B, T/s, C] and,
    for checking, its leaves' gradients mapped to the layout of the reference's leaves."""
    forward: Callable[[], torch.Tensor]
    as_nlc: Callable[[torch.Tensor], torch.Tensor]
    grads: Callable[[], list[torch.Tensor]]


def already_nlc(out):
    return out


def ncl_to_nlc(out):
    return out.transpose(1, 2)


def leaf(t):
    return t.detach().clone().requires_grad_()


def randn(*shape, device, scale=1.0):
    """Drawn on the CPU from the test's seed, so that every device gets the same values."""
    return (torch.randn(*shape) * scale).to(device)


def check_and_bench(bench, candidate: Candidate, reference, mode, *, group, provider, samples, flops=None,
                    nbytes=None, grad_tol=GRAD_TOL):
    """Checks the candidate against reference = (output, gradients of the reference's leaves, output
    gradient), all in the reference's layouts, then times it in `mode`. The check's call is also the
    warm-up."""
    want_out, want_grads, grad_nlc = reference
    out = candidate.forward()
    torch.testing.assert_close(candidate.as_nlc(out), want_out, **OUTPUT_TOL)
    grad_out = torch.empty_like(out)  # the output gradient in the candidate's own layout
    candidate.as_nlc(grad_out).copy_(grad_nlc)
    if mode == "fwd+bwd":
        out.backward(grad_out)
        for i, (got, want) in enumerate(zip(candidate.grads(), want_grads, strict=True)):
            error = (got - want).norm() / want.norm()
            assert error <= grad_tol, f"gradient of leaf {i}: relative error {error:.2e}"

        def fn():
            candidate.forward().backward(grad_out)
    else:
        def fn():
            with torch.no_grad():
                candidate.forward()
    bench(fn, group=group, provider=provider, samples=samples, flops=flops, nbytes=nbytes)


def reference_result(forward, leaves, pre_activation, mode):
    """The reference's output, its gradients for a random output gradient, and that gradient. The
    gradient is zero where the pre-activation is within 1e-3 of zero, where a ReLU could cut in one
    provider and not in another."""
    grad = torch.randn(pre_activation.shape, generator=torch.Generator().manual_seed(1)).to(pre_activation.device)
    grad = grad * (pre_activation.abs() > 1e-3)
    out = forward()
    if mode == "fwd":
        return out.detach(), [], grad
    return out.detach(), list(torch.autograd.grad(out, leaves, grad)), grad


@pytest.mark.parametrize("provider", ["rhmfast", "conv1d_ncl", "linear_nlc"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", LAYER_SHAPES, ids=shape_id)
def test_patch_conv(bench, device, shape, mode, provider):
    width, s = shape
    torch.manual_seed(0)
    x = randn(BATCH, T_OUT * s, width, device=device)
    weight = randn(width, s * width, device=device, scale=1 / math.sqrt(s * width))  # (k, c) columns
    bias = randn(width, device=device)
    ref_leaves = [leaf(x), leaf(weight), leaf(bias)]
    pre = patch_conv_ref.patch_conv(*ref_leaves, patch_size=s).detach()
    reference = reference_result(lambda: patch_conv_ref.patch_conv(*ref_leaves, patch_size=s, activation="relu"),
                                 ref_leaves, pre, mode)

    if provider == "rhmfast":
        leaves = [leaf(x), leaf(weight), leaf(bias)]
        cand = Candidate(lambda: patch_conv(*leaves, patch_size=s, activation="relu"), already_nlc,
                         lambda: [t.grad for t in leaves])
    elif provider == "conv1d_ncl":
        conv = nn.Conv1d(width, width, s, stride=s, device=device)
        with torch.no_grad():
            conv.weight.copy_(weight.view(width, s, width).permute(0, 2, 1))
            conv.bias.copy_(bias)
        x_ncl = leaf(x.transpose(1, 2).contiguous())
        cand = Candidate(lambda: torch.relu(conv(x_ncl)), ncl_to_nlc,
                         lambda: [x_ncl.grad.transpose(1, 2), conv.weight.grad.permute(0, 2, 1).reshape(width, -1),
                                  conv.bias.grad])
    else:
        leaves = [leaf(x), leaf(weight), leaf(bias)]
        x_, w_, b_ = leaves
        cand = Candidate(lambda: torch.relu(F.linear(x_.view(BATCH, T_OUT, s * width), w_, b_)), already_nlc,
                         lambda: [t.grad for t in leaves])
    flops = 2 * BATCH * T_OUT * s * width * width * (1 if mode == "fwd" else 3)
    check_and_bench(bench, cand, reference, mode, provider=provider, samples=BATCH, flops=flops,
                    group=f"patch_conv C={width} s={s} B={BATCH} T={T_OUT * s} {mode}")


@pytest.mark.parametrize("provider", ["rhmfast", "onehot_conv1d", "embedding_bag"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", LAYER_SHAPES, ids=shape_id)
def test_token_patch_embed(bench, device, shape, mode, provider):
    width, s = shape
    torch.manual_seed(0)
    tokens = torch.randint(0, VOCAB, (BATCH, T_OUT * s)).to(device)
    table = randn(s, VOCAB, width, device=device)
    bias = randn(width, device=device)
    ref_leaves = [leaf(table), leaf(bias)]
    pre = token_patch_embed_ref.token_patch_embed(tokens, *ref_leaves, patch_size=s).detach()
    reference = reference_result(
        lambda: token_patch_embed_ref.token_patch_embed(tokens, *ref_leaves, patch_size=s, activation="relu"),
        ref_leaves, pre, mode)

    if provider == "rhmfast":
        leaves = [leaf(table), leaf(bias)]
        cand = Candidate(lambda: token_patch_embed(tokens, *leaves, patch_size=s, activation="relu"), already_nlc,
                         lambda: [t.grad for t in leaves])
    elif provider == "onehot_conv1d":
        conv = nn.Conv1d(VOCAB, width, s, stride=s, device=device)
        with torch.no_grad():
            conv.weight.copy_(table.permute(2, 1, 0))
            conv.bias.copy_(bias)
        cand = Candidate(lambda: torch.relu(conv(F.one_hot(tokens, VOCAB).float().transpose(1, 2))), ncl_to_nlc,
                         lambda: [conv.weight.grad.permute(2, 1, 0), conv.bias.grad])
    else:
        rows, b_ = leaf(table.reshape(s * VOCAB, width)), leaf(bias)
        offsets = torch.arange(s, device=device) * VOCAB  # patch position k reads rows k*v .. k*v + v-1
        cand = Candidate(
            lambda: torch.relu(F.embedding_bag(tokens.view(BATCH * T_OUT, s) + offsets, rows, mode="sum") + b_)
            .view(BATCH, T_OUT, width), already_nlc, lambda: [rows.grad.view(s, VOCAB, width), b_.grad])
    # Bytes per output position: the s table rows read and the output row written (twice that with the
    # backward), as bench_patchconv.py counts them.
    nbytes = BATCH * T_OUT * width * 4 * (s + 1) * (1 if mode == "fwd" else 2)
    check_and_bench(bench, cand, reference, mode, provider=provider, samples=BATCH, nbytes=nbytes,
                    group=f"token_patch_embed v={VOCAB} C={width} s={s} B={BATCH} T={T_OUT * s} {mode}")


@pytest.mark.parametrize("provider", ["rhmfast", "reference", "conv1d_onehot"])
@pytest.mark.parametrize("width", TRUNK_WIDTHS, ids=lambda w: f"C{w}")
def test_patch_conv_stack(bench, device, width, provider):
    v, s, layers, batch = TRUNK["v"], TRUNK["s"], TRUNK["L"], TRUNK["batch"]
    mode = "fwd+bwd"
    torch.manual_seed(0)
    tokens = torch.randint(0, v, (batch, s**layers)).to(device)
    table = randn(s, v, width, device=device)
    weights = [randn(width, s * width, device=device) for _ in range(layers - 1)]
    scales = hcnn_scales(table, weights)

    def reference_trunk(table, *weights):
        return patch_conv_stack_ref.patch_conv_stack(tokens, table, list(weights), [], patch_size=s,
                                                     scales=scales)[-1]

    ref_leaves = [leaf(table), *map(leaf, weights)]
    with torch.no_grad():  # the last layer's pre-activation: inner ReLUs as in the forward
        inner = patch_conv_stack_ref.patch_conv_stack(tokens, table, weights[:-1], [], patch_size=s,
                                                      scales=scales[:-1])[-1]
        pre = patch_conv_ref.patch_conv(inner, weights[-1], patch_size=s, scale=scales[-1])
    reference = reference_result(lambda: reference_trunk(*ref_leaves), ref_leaves, pre, mode)

    if provider in ("rhmfast", "reference"):
        leaves = [leaf(table), *map(leaf, weights)]
        if provider == "rhmfast":
            def forward():
                return patch_conv_stack(tokens, leaves[0], leaves[1:], patch_size=s, scales="hcnn")
        else:
            def forward():
                return reference_trunk(*leaves)
        cand = Candidate(forward, already_nlc, lambda: [t.grad for t in leaves])
    else:
        convs = [nn.Conv1d(v if layer == 0 else width, width, s, stride=s, bias=False, device=device)
                 for layer in range(layers)]
        with torch.no_grad():  # Conv1d weights [C_out, C_in, s]; the hCNN scale folded in
            convs[0].weight.copy_(table.permute(2, 1, 0) * scales[0])
            for conv, w, c in zip(convs[1:], weights, scales[1:]):
                conv.weight.copy_(w.view(width, s, width).permute(0, 2, 1) * c)
        trunk = nn.Sequential(*[m for conv in convs for m in (conv, nn.ReLU())])
        cand = Candidate(
            lambda: trunk(F.one_hot(tokens, v).float().transpose(1, 2)), ncl_to_nlc,
            # d/dW of W*c is c times d/d(W*c)
            lambda: [convs[0].weight.grad.permute(2, 1, 0) * scales[0]]
            + [conv.weight.grad.permute(0, 2, 1).reshape(width, -1) * c for conv, c in zip(convs[1:], scales[1:])])
    flops = 3 * sum(2 * batch * s ** (layers - layer - 1) * s * (v if layer == 0 else width) * width
                    for layer in range(layers))
    check_and_bench(bench, cand, reference, mode, provider=provider, samples=batch, flops=flops,
                    grad_tol=TRUNK_GRAD_TOL,
                    group=f"patch_conv_stack v={v} s={s} L={layers} C={width} B={batch} {mode}")
