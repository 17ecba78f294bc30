"""patch_conv_stack: equal to the layer-by-layer ops and to an nn.Conv1d stack on one-hot input,
gradients (of the last and of intermediate outputs), determinism, opcheck, errors."""
import math

import pytest
import torch

from patchconv_samples import TOLERANCE, backend, cuda, generator, need_extension, one_hot_weight, randn
from rhmfast.ops.patch_conv import patch_conv
from rhmfast.ops.patch_conv_stack import hcnn_scales, patch_conv_stack
from rhmfast.ops.token_patch_embed import token_patch_embed

assert backend  # fixture, used by name


def trunk(widths, vocab, s, layers, batch, dtype, seed=0, bias=False, requires_grad=False, device="cpu"):
    """tokens [B, s^L], table [s, v, H_0], weights [H_l, s*H_{l-1}], biases (or [])."""
    gen = generator(seed)
    tokens = torch.randint(0, vocab, (batch, s ** layers), generator=gen).to(device)
    table = randn((s, vocab, widths[0]), dtype, device, gen, requires_grad)
    weights = [randn((widths[l], s * widths[l - 1]), dtype, device, gen, requires_grad) for l in range(1, layers)]
    biases = [randn((w,), dtype, device, gen, requires_grad) for w in widths] if bias else []
    return tokens, table, weights, biases


# The kernels run layer 2 on the v^s distinct first-layer patches when 2 * s * v^s <= B * T / s positions
# (csrc/patch_conv_stack.cpp); batch 3 below takes the plain path, batch 40 the shortcut for s = 2.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("s,layers,bias", [(2, 4, False), (3, 3, True), (4, 2, True)])
@pytest.mark.parametrize("batch", [3, 40])
def test_equals_layer_by_layer(backend, dtype, s, layers, bias, batch):
    widths = [5, 7, 3, 6][:layers]
    tokens, table, weights, biases = trunk(widths, 4, s, layers, batch, dtype, seed=s, bias=bias)
    outs = patch_conv_stack(tokens, table, weights, biases, patch_size=s, scales="hcnn", return_all=True)
    scales = hcnn_scales(table, weights)
    b = biases or [None] * layers
    h = token_patch_embed(tokens, table, b[0], patch_size=s, scale=scales[0], activation="relu")
    torch.testing.assert_close(outs[0], h, **TOLERANCE[dtype])
    for l, w in enumerate(weights):
        h = patch_conv(h, w, b[l + 1], patch_size=s, scale=scales[l + 1], activation="relu")
        torch.testing.assert_close(outs[l + 1], h, **TOLERANCE[dtype])
    assert len(outs) == layers and outs[-1].shape == (batch, 1, widths[-1])


def test_equals_conv1d_stack_on_one_hot(backend):
    s, layers, vocab, width = 2, 3, 6, 8
    tokens, table, weights, _ = trunk([width] * layers, vocab, s, layers, 5, torch.float64, seed=7)
    convs = []
    for l, w in enumerate([one_hot_weight(table)] + weights):
        c_in = vocab if l == 0 else width
        conv = torch.nn.Conv1d(c_in, width, s, s, bias=False, dtype=torch.float64)
        conv.weight.data = w.reshape(width, s, c_in).permute(0, 2, 1) / math.sqrt(s * c_in)
        convs += [conv, torch.nn.ReLU()]
    x = torch.nn.functional.one_hot(tokens, vocab).double().transpose(1, 2)
    expected = torch.nn.Sequential(*convs)(x).transpose(1, 2)
    torch.testing.assert_close(patch_conv_stack(tokens, table, weights, patch_size=s, scales="hcnn"), expected)


@pytest.mark.parametrize("activation", ["relu", "square", "none"])
@pytest.mark.parametrize("vocab,batch", [(5, 2), (3, 12)])  # plain path; distinct-patch shortcut (2*2*9 <= 48)
def test_gradcheck_with_intermediate_outputs(backend, activation, vocab, batch):
    tokens, table, weights, biases = trunk([4, 3, 5], vocab, 2, 3, batch, torch.float64, seed=1, bias=True,
                                           requires_grad=True)

    def used_outputs(table, *params):
        outs = patch_conv_stack(tokens, table, params[:2], params[2:], patch_size=2, scales=[0.5, 1.0, 2.0],
                                activation=activation, return_all=True)
        return outs[0].square().sum() + outs[2].sum()  # outs[1] unused: no gradient flows in there

    assert torch.autograd.gradcheck(used_outputs, (table, *weights, *biases))
    assert torch.autograd.gradcheck(lambda t, *w: patch_conv_stack(tokens, t, w, patch_size=2), (table, *weights))


@pytest.mark.parametrize("vocab", [4, 40])  # distinct-patch shortcut; plain path
def test_backward_is_deterministic(backend, vocab):
    tokens, table, weights, _ = trunk([32, 32, 32], vocab, 2, 3, 64, torch.float32, seed=2, requires_grad=True)
    runs = []
    for _ in range(3):
        y = patch_conv_stack(tokens, table, weights, patch_size=2, scales="hcnn")
        runs.append(torch.autograd.grad(y.sum(), (table, *weights)))
    for run in runs[1:]:
        assert all(torch.equal(g, g0) for g, g0 in zip(run, runs[0]))


def test_frozen_parameters_get_no_gradient(backend):
    """Layerwise training freezes layers: only the parameters that require grad get one, with the values
    of a run where all do."""
    tokens, table, weights, biases = trunk([4, 3, 5], 5, 2, 3, 6, torch.float64, seed=5, bias=True,
                                           requires_grad=True)
    y = patch_conv_stack(tokens, table, weights, biases, patch_size=2, scales="hcnn")
    want = torch.autograd.grad(y.sum(), (weights[1], biases[2]))
    frozen = [p.detach() for p in (table, weights[0], biases[0], biases[1])]
    y = patch_conv_stack(tokens, frozen[0], [frozen[1], weights[1]], [frozen[2], frozen[3], biases[2]],
                         patch_size=2, scales="hcnn")
    y.sum().backward()
    assert all(p.grad is None for p in (table, weights[0], biases[0], biases[1]))
    assert torch.equal(weights[1].grad, want[0]) and torch.equal(biases[2].grad, want[1])


def test_double_backward_raises():
    need_extension()
    tokens, table, weights, _ = trunk([4, 3, 5], 5, 2, 3, 2, torch.float64, seed=6, requires_grad=True)
    outs = torch.ops.rhmfast.patch_conv_stack(tokens, table, weights, [], 2, [1.0, 1.0, 1.0], "square")
    (g_table,) = torch.autograd.grad(outs[-1].sum(), table, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        g_table.sum().backward()


def test_opcheck():
    need_extension()
    op = torch.ops.rhmfast.patch_conv_stack.default
    for requires_grad, bias, vocab, batch in ((False, True, 5, 2), (True, False, 5, 2), (True, True, 3, 12)):
        tokens, table, weights, biases = trunk([4, 3, 5], vocab, 2, 3, batch, torch.float32, seed=3, bias=bias,
                                               requires_grad=requires_grad)
        torch.library.opcheck(op, (tokens, table, weights, biases, 2, [0.5, 1.0, 2.0], "relu"))
    tokens, table, weights, biases = trunk([4, 3, 5], 5, 2, 3, 2, torch.float32, seed=4, bias=True)
    outs = op(tokens, table, weights, biases, 2, [0.5, 1.0, 2.0], "relu")
    torch.library.opcheck(torch.ops.rhmfast.patch_conv_stack_backward.default,
                          ([None, torch.randn_like(outs[1]), torch.randn_like(outs[2])], tokens, table, weights,
                           biases, outs, 2, [0.5, 1.0, 2.0], "relu"))


def test_errors(backend):
    tokens, table, weights, biases = trunk([4, 3, 5], 5, 2, 3, 2, torch.float32, bias=True)
    with pytest.raises(ValueError, match="scales must have one entry per layer"):
        patch_conv_stack(tokens, table, weights, patch_size=2, scales=[1.0])
    with pytest.raises(ValueError, match="biases must be empty or one per layer"):
        patch_conv_stack(tokens, table, weights, biases[:2], patch_size=2)
    with pytest.raises(ValueError, match="columns but patch_size"):
        patch_conv_stack(tokens, table, weights[::-1], patch_size=2)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        patch_conv_stack(tokens[:, :6], table, weights, patch_size=2)
    with pytest.raises(ValueError, match="scales must be None, 'hcnn'"):
        patch_conv_stack(tokens, table, weights, patch_size=2, scales="ntk")
    for batch in (2, 40):  # plain path and distinct-patch shortcut
        tokens, table, weights, _ = trunk([4, 3, 5], 5, 2, 3, batch, torch.float32)
        tokens[-1, -1] = -3
        with pytest.raises(ValueError, match=r"token ids must be in \[0, vocab_size=5\)"):
            patch_conv_stack(tokens, table, weights, patch_size=2)
        tokens[-1, -1] = 0
        # The second layer's weight is checked on both paths (the shortcut reads it in column blocks).
        with pytest.raises(ValueError, match="columns but patch_size"):
            patch_conv_stack(tokens, table, [torch.randn(3, 9), weights[1]], patch_size=2)
        with pytest.raises(TypeError, match="dtype"):
            patch_conv_stack(tokens, table, [weights[0].double(), weights[1]], patch_size=2)


def test_backward_op_checks_every_output_gradient():
    need_extension()
    tokens, table, weights, biases = trunk([4, 3, 5], 5, 2, 3, 2, torch.float32, bias=True)
    outs = torch.ops.rhmfast.patch_conv_stack(tokens, table, weights, biases, 2, [1.0, 1.0, 1.0], "relu")
    grads = [torch.ones(1), None, torch.randn_like(outs[2])]  # would broadcast into layer 0's gradient
    with pytest.raises(ValueError, match=r"grad_outs\[0\] must have the shape of outs\[0\]"):
        torch.ops.rhmfast.patch_conv_stack_backward(grads, tokens, table, weights, biases, outs, 2, [1.0] * 3, "relu")
    grads[0] = torch.randn_like(outs[0]).double()
    with pytest.raises(TypeError, match=r"grad_outs\[0\] has dtype"):
        torch.ops.rhmfast.patch_conv_stack_backward(grads, tokens, table, weights, biases, outs, 2, [1.0] * 3, "relu")


@pytest.mark.cuda
@cuda
def test_cuda_matches_cpu():
    tokens, table, weights, biases = trunk([64, 48, 32], 16, 2, 3, 32, torch.float64, seed=5, bias=True,
                                           requires_grad=True)
    y64 = patch_conv_stack(tokens, table, weights, biases, patch_size=2, scales="hcnn")
    grads64 = torch.autograd.grad(y64.sum(), (table, *weights, *biases))
    params = [t.detach().cuda().float().requires_grad_() for t in (table, *weights, *biases)]
    y = patch_conv_stack(tokens.cuda(), params[0], params[1:3], params[3:], patch_size=2, scales="hcnn")
    torch.testing.assert_close(y.double().cpu(), y64.detach(), rtol=1e-5, atol=1e-5)
    for g, g64 in zip(torch.autograd.grad(y.sum(), params), grads64):
        torch.testing.assert_close(g.double().cpu(), g64, rtol=1e-5, atol=1e-4)


def test_backward_fake_kernel_checks_the_gradients():
    need_extension()
    tokens, table, weights, biases = trunk([4, 3, 5], 5, 2, 3, 2, torch.float32, bias=True)
    outs = torch.ops.rhmfast.patch_conv_stack(tokens, table, weights, biases, 2, [1.0, 1.0, 1.0], "relu")
    grads = [torch.randn_like(outs[0], device="meta"), None, None]
    with pytest.raises(ValueError, match=r"grad_outs\[0\] is on meta, table on cpu"):
        torch.ops.rhmfast.patch_conv_stack_backward(grads, tokens, table, weights, biases, outs, 2, [1.0] * 3, "relu")
