"""locally_connected and the hierarchical LCN: the op against an independent per-patch computation (both
backends), gradients, opcheck, input handling and errors; LocallyConnected against a transcription of the
2024 library's hLCN (models/lcn.py), its reference state dicts, torch.compile and training."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import rhmfast
from model_checks import (assert_compiled_matches_eager, assert_reference_keys_checked, assert_same_state,
                          onehot_input, reference_source)
from patchconv_samples import (ACTIVATIONS, DEVICE_DTYPES, TOLERANCE, assert_cuda_matches_cpu,
                               assert_grads_match_float64, assert_refuses_mixed_dtypes_and_devices,
                               assert_within_twice_torch_error, backend, cuda_cases, generator, randn)
from rhmfast.models import LocallyConnected
from rhmfast.ops._kernels import op_registered
from rhmfast.ops.locally_connected import locally_connected
from rhmfast.reference import locally_connected as reference
from rhmfast.train import train_sgd

assert backend  # fixture, used by name

# Odd sizes on purpose: batch 1 and primes, one patch, channel counts that are not SIMD multiples.
SHAPES = [  # (batch, patches, C_in, C_out)
    (1, 1, 1, 1), (3, 5, 7, 11), (2, 4, 16, 9), (5, 3, 33, 17), (4, 1, 6, 2),
]


def need_op():
    """The op tests need the compiled op: a build without it is a failure, never a skip."""
    assert op_registered("locally_connected"), "rhmfast._C lacks the locally_connected op: rebuild the extension"


def sample(batch, n_patches, c_in, c_out, s, dtype, device="cpu", seed=0, requires_grad=False, bias=True):
    """x [B, P*s, C_in] channels-last, weight [P, C_out, s*C_in] (k, c order), bias [P, C_out] or None."""
    gen = generator(seed)
    x = randn((batch, n_patches * s, c_in), dtype, device, gen, requires_grad)
    weight = randn((n_patches, c_out, s * c_in), dtype, device, gen, requires_grad)
    b = randn((n_patches, c_out), dtype, device, gen, requires_grad) if bias else None
    return x, weight, b


def per_patch(x, weight, bias, s, scale, activation):
    """What locally_connected must compute, one patch at a time in float64 (differentiable)."""
    batch, _, c_in = x.shape
    rows = [x[:, p * s:(p + 1) * s].double().reshape(batch, s * c_in) @ weight[p].double().t()
            for p in range(weight.shape[0])]
    z = torch.stack(rows, dim=1) * scale
    if bias is not None:
        z = z + bias.double()
    return {"none": z, "relu": torch.relu(z), "square": z * z}[activation]


# ---- the op ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("s", [2, 3, 4])
def test_matches_per_patch_products(backend, rng, device, dtype, s):
    for shape in SHAPES:
        for activation in ACTIVATIONS:
            for use_bias in (False, True):
                scale = rng.uniform(0.2, 1.5)
                x, w, b = sample(*shape, s, dtype, device, seed=rng.randrange(1 << 30), bias=use_bias)
                y = locally_connected(x, w, b, patch_size=s, scale=scale, activation=activation)
                assert y.shape == (shape[0], shape[1], shape[3]) and y.dtype == dtype and y.is_contiguous()
                expected = per_patch(x, w, b, s, scale, activation)
                if dtype in TOLERANCE:
                    torch.testing.assert_close(y.double().cpu(), expected.cpu(), **TOLERANCE[dtype])
                else:  # half types (CUDA)
                    same_precision = reference.locally_connected(x, w, b, patch_size=s, scale=scale,
                                                                 activation=activation)
                    assert_within_twice_torch_error(y, same_precision, expected)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("wanted", ["all", "x", "weight", "bias"])
def test_backward_matches_autograd_of_per_patch_products(backend, rng, activation, wanted):
    flags = {"all": (1, 1, 1), "x": (1, 0, 0), "weight": (0, 1, 0), "bias": (0, 0, 1)}[wanted]
    assert_grads_match_float64(lambda *t: locally_connected(*t, patch_size=3, scale=0.5, activation=activation),
                               lambda *t: per_patch(*t, 3, 0.5, activation),
                               sample(4, 6, 9, 13, 3, torch.float32, seed=rng.randrange(1 << 30)), flags)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck(backend, activation):
    x, w, b = sample(2, 3, 4, 5, 2, torch.float64, seed=3, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: locally_connected(*a, patch_size=2, scale=0.8, activation=activation), (x, w, b))
    assert torch.autograd.gradcheck(lambda x_, w_: locally_connected(x_, w_, patch_size=2, activation=activation),
                                    (x, w))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_opcheck(activation):
    need_op()
    op = torch.ops.rhmfast.locally_connected.default
    for requires_grad in (False, True):
        x, w, b = sample(3, 4, 5, 6, 2, torch.float32, seed=5, requires_grad=requires_grad)
        torch.library.opcheck(op, (x, w, b, 2, 0.5, activation))
        torch.library.opcheck(op, (x, w, None, 2, 1.0, activation))
    x, w, b = sample(3, 4, 5, 6, 2, torch.float32, seed=6)
    y = torch.ops.rhmfast.locally_connected(x, w, b, 2, 0.5, activation)
    torch.library.opcheck(torch.ops.rhmfast.locally_connected_backward.default,
                          (torch.randn_like(y), x, w, b, y, 2, 0.5, activation, [True, False, True]))


def test_kernel_and_reference_agree_on_the_library_sizes():
    """The width-256 layer of the benchmarks: the two backends within float32 rounding of each other."""
    need_op()
    x, w, b = sample(32, 4, 256, 256, 2, torch.float32, seed=9, requires_grad=True)
    args = dict(patch_size=2, scale=512**-0.5, activation="relu")
    y = torch.ops.rhmfast.locally_connected(x, w, b, 2, 512**-0.5, "relu")
    y_ref = reference.locally_connected(x, w, b, **args)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(y)
    for g, g_ref in zip(torch.autograd.grad(y, (x, w, b), grad_out), torch.autograd.grad(y_ref, (x, w, b), grad_out)):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)


def test_non_contiguous_inputs(backend):
    x, w, b = sample(4, 5, 6, 7, 2, torch.float64, seed=8)
    expected = per_patch(x, w, b, 2, 1.0, "relu")
    channels_first = x.transpose(1, 2).contiguous().transpose(1, 2)  # [B, T, C] view of [B, C, T] memory
    batch_strided = torch.stack([x, torch.zeros_like(x)], dim=1).flatten(0, 1)[::2]  # every other sample
    w_t = w.transpose(1, 2).contiguous().transpose(1, 2)
    b_t = b.t().contiguous().t()
    for xi in (channels_first, batch_strided):
        torch.testing.assert_close(locally_connected(xi, w_t, b_t, patch_size=2, activation="relu"), expected)
    grad_y = torch.randn(expected.shape, dtype=expected.dtype).transpose(0, 1).contiguous().transpose(0, 1)
    x_ref = x.clone().requires_grad_()
    per_patch(x_ref, w, b, 2, 1.0, "relu").backward(grad_y)
    for xi in (channels_first, batch_strided):
        xi = xi.detach().requires_grad_()
        locally_connected(xi, w_t, b_t, patch_size=2, activation="relu").backward(grad_y)
        torch.testing.assert_close(xi.grad, x_ref.grad)


def test_errors(backend):
    x, w, b = sample(2, 3, 4, 5, 2, torch.float32)
    with pytest.raises(ValueError, match="input length 5 is not a multiple of patch_size 2"):
        locally_connected(x[:, :5], w, patch_size=2)
    with pytest.raises(ValueError, match=r"weight has 3 patches but the input has T/patch_size = 4/2 = 2"):
        locally_connected(x[:, :4], w, patch_size=2)
    with pytest.raises(ValueError, match="weight has 8 columns but patch_size\\*C_in = 2\\*3"):
        locally_connected(x[..., :3], w, patch_size=2)
    with pytest.raises(ValueError, match=r"weight has 3 patches but the input has T/patch_size = 6/3 = 2"):
        locally_connected(x, w, patch_size=3)
    with pytest.raises(ValueError, match=r"bias must have shape \[n_patches=3, C_out=5\], got \[5\]"):
        locally_connected(x, w, b[0], patch_size=2)
    with pytest.raises(ValueError, match=r"bias must have shape \[n_patches=3, C_out=5\], got \[2, 5\]"):
        locally_connected(x, w, b[:2], patch_size=2)
    with pytest.raises(ValueError, match="activation must be"):
        locally_connected(x, w, patch_size=2, activation="gelu")
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, C_in\]"):
        locally_connected(x[0], w, patch_size=2)
    with pytest.raises(ValueError, match=r"weight must have shape \[n_patches, C_out, patch_size\*C_in\]"):
        locally_connected(x, w[0], patch_size=2)
    with pytest.raises(ValueError, match="patch_size must be"):
        locally_connected(x, w, patch_size=0)
    with pytest.raises(TypeError, match="x must be"):
        locally_connected(x.to(torch.bfloat16), w.to(torch.bfloat16), patch_size=2)
    with pytest.raises(TypeError, match="x must be"):
        locally_connected(x.long(), w.long(), patch_size=2)
    assert_refuses_mixed_dtypes_and_devices(lambda *t: locally_connected(*t, patch_size=2), x, w, b)


def test_backward_op_checks_its_arguments():
    """The backward op (kernel or fake kernel) refuses a grad_out of another shape or device, relu without
    its output, and a bias gradient without a bias."""
    need_op()
    x, w, b = sample(2, 3, 4, 5, 2, torch.float32)
    op = torch.ops.rhmfast.locally_connected_backward
    with pytest.raises(ValueError, match="grad_out must have the output's shape"):
        op(torch.randn(2, 4, 5), x, w, b, None, 2, 1.0, "none", [True, True, True])
    with pytest.raises(ValueError, match="grad_out is on meta, the weights on cpu"):
        op(torch.randn(2, 3, 5, device="meta"), x, w, b, None, 2, 1.0, "none", [True, True, True])
    with pytest.raises(ValueError, match="relu backward needs the forward output"):
        op(torch.randn(2, 3, 5), x, w, b, None, 2, 1.0, "relu", [True, True, True])
    for device in ("cpu", "meta"):
        with pytest.raises(ValueError, match="grad of bias asked for but bias is None"):
            op(torch.randn(2, 3, 5, device=device), x.to(device), w.to(device), None, None, 2, 1.0, "none",
               [True, True, True])


def test_double_backward_raises():
    need_op()
    x, w, b = sample(2, 3, 4, 5, 2, torch.float64, requires_grad=True)
    y = torch.ops.rhmfast.locally_connected(x, w, b, 2, 1.0, "square")  # the op itself, whatever the backend
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        gx.sum().backward()


def test_backward_is_deterministic(backend):
    x, w, b = sample(8, 16, 32, 24, 2, torch.float32, seed=21, requires_grad=True)
    runs = []
    for _ in range(3):
        y = locally_connected(x, w, b, patch_size=2, activation="relu")
        runs.append(torch.autograd.grad(y, (x, w, b), torch.ones_like(y)))
    for run in runs[1:]:
        for g, g0 in zip(run, runs[0]):
            assert torch.equal(g, g0)


def test_empty_batch_gradients_are_empty_sums(backend):
    x, w, b = sample(0, 3, 5, 4, 2, torch.float32, requires_grad=True)
    y = locally_connected(x, w, b, patch_size=2, activation="relu")
    assert y.shape == (0, 3, 4)
    grad_x, grad_w, grad_b = torch.autograd.grad(y, (x, w, b), torch.ones_like(y))
    assert grad_x.shape == (0, 6, 5)
    assert torch.equal(grad_w, torch.zeros(3, 4, 10)) and torch.equal(grad_b, torch.zeros(3, 4))


@cuda_cases
def test_cuda_matches_cpu_and_the_reference(dtype, activation):
    """The CUDA kernels against the CPU op in float64 (assert_cuda_matches_cpu: the half types against the
    pure-PyTorch reference computing in that dtype on the GPU), and in float32/float64 against the reference on
    the same GPU tensors: output and gradients, the per-patch bias sums included."""
    inputs = sample(16, 8, 64, 48, 2, torch.float64, seed=4, requires_grad=True)
    cfg = dict(patch_size=2, scale=0.5, activation=activation)
    args, grads, grad_out = assert_cuda_matches_cpu(lambda *t: locally_connected(*t, **cfg),
                                                    lambda *t: reference.locally_connected(*t, **cfg), inputs, dtype)
    if dtype in (torch.float32, torch.float64):
        y_ref = reference.locally_connected(*args, **cfg)
        torch.testing.assert_close(locally_connected(*args, **cfg), y_ref, rtol=1e-5, atol=1e-5)
        for g, g_ref in zip(grads, torch.autograd.grad(y_ref, args, grad_out)):
            assert g.is_cuda and g.dtype == dtype
            torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-4)


def test_import_rhmfast_registers_the_fake_kernels():
    """`import rhmfast` alone gives the op its fake kernel (what meta tensors and torch.compile run on)."""
    need_op()
    code = ("import torch, rhmfast\n"
            "m = lambda *shape: torch.empty(shape, device='meta')\n"
            "print(*torch.ops.rhmfast.locally_connected(m(3, 8, 5), m(4, 6, 10), None, 2, 1.0, 'relu').shape)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["3", "4", "6"]


# ---- the model, against the 2024 library's hLCN ----------------------------------------------------------

def library_hlcn(x, state, norm):
    """models/lcn.py hLCN.forward on x [B, C, d]: per layer MyLoc1d (F.unfold into patches [B, C, P, s], the
    broadcast product with filter [H, C, P, s] summed over C and s, times (C*s)^-1/2, plus bias [1, H, P]),
    ReLU; mean over positions, x @ readout / norm with norm = sqrt(H) ("std") or H ("mf")."""
    L = sum(1 for key in state if key.endswith(".filter"))
    for l in range(L):
        f = state[f"hidden.{l}.0.filter"]
        c, n_patches, s = f.shape[1:]
        patches = F.unfold(x.unsqueeze(-1), kernel_size=(s, 1), dilation=1, padding=0, stride=s)
        patches = patches.reshape(-1, c, s, n_patches).transpose(-1, -2)
        out = (patches[:, None] * f).sum(dim=[-1, -3]) * (c * s) ** -0.5
        if f"hidden.{l}.0.bias" in state:
            out = out + state[f"hidden.{l}.0.bias"]
        x = torch.relu(out)
    width = state["readout"].shape[0]
    return x.mean(dim=[-1]) @ state["readout"] / (width**0.5 if norm == "std" else width)


def library_state(v, width, s, L, n_classes, bias, gen, dtype=torch.float64):
    """A library hLCN state dict in its state_dict's order (own readout first), drawn as its __init__ draws."""
    state = {"readout": None}
    for l in range(L):
        n_patches = s ** (L - 1 - l)
        state[f"hidden.{l}.0.filter"] = torch.randn(width, v if l == 0 else width, n_patches, s, generator=gen,
                                                    dtype=dtype)
        if bias:
            state[f"hidden.{l}.0.bias"] = torch.randn(1, width, n_patches, generator=gen, dtype=dtype)
    state["readout"] = torch.randn(width, n_classes, generator=gen, dtype=dtype)
    return state


@pytest.mark.parametrize("s,L", [(2, 1), (2, 3), (3, 2), (2, 4)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("norm", ["mf", "std"])
def test_model_matches_the_library_formulation(backend, rng, s, L, bias, norm):
    gen = generator(rng.randrange(1 << 30))
    v, width, n_classes = 5, 7, 4
    state = {k: t.requires_grad_() for k, t in library_state(v, width, s, L, n_classes, bias, gen).items()}
    tokens = torch.randint(0, v, (11, s**L), generator=gen)
    expected = library_hlcn(onehot_input(tokens, v), state, norm)
    model = LocallyConnected.from_reference({k: t.detach() for k, t in state.items()}, norm=norm)
    assert (model.v, model.width, model.s, model.L, model.n_classes, model.d, model.norm) == (
        v, width, s, L, n_classes, s**L, norm)
    assert model.lr_scale == (width if norm == "mf" else 1.0) and model.readout_norm == (
        width if norm == "mf" else width**0.5)
    out = model(tokens)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    outputs = model.layer_outputs(tokens)
    assert [h.shape for h in outputs] == [(11, s ** (L - l), width) for l in range(1, L + 1)]
    if backend == "extension":  # the first layer is the token gather, the others the fused op
        ops = ["TokenPatchEmbed"] + ["LocallyConnected"] * (L - 1)
        assert all(h.grad_fn.name().endswith(f"::{op}>") for h, op in zip(outputs, ops))
    # Gradients: the model's, carried to the library's layout, equal the library's.
    labels = torch.randint(0, n_classes, (11,), generator=gen)
    grads = torch.autograd.grad(F.cross_entropy(out, labels), list(model.parameters()))
    expected_grads = torch.autograd.grad(F.cross_entropy(expected, labels), list(state.values()))
    carrier = LocallyConnected.from_reference({k: t.detach() for k, t in state.items()}, norm=norm)
    with torch.no_grad():
        for p, g in zip(carrier.parameters(), grads):
            p.copy_(g)
    for (key, got), want in zip(carrier.to_reference_state_dict().items(), expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=key)
    # float32 parameters against the float64 library.
    model32 = LocallyConnected.from_reference({k: t.detach().float() for k, t in state.items()}, norm=norm)
    torch.testing.assert_close(model32(tokens).double(), expected.detach(), rtol=0, atol=2e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_reference_state_dict_round_trip(bias):
    model = LocallyConnected(6, 5, 3, 2, 4, bias=bias, seed=2)
    state = model.to_reference_state_dict()
    keys = ["readout", "hidden.0.0.filter"] + (["hidden.0.0.bias"] if bias else []) + ["hidden.1.0.filter"] + (
        ["hidden.1.0.bias"] if bias else [])
    assert list(state) == keys
    shapes = {"readout": (5, 4), "hidden.0.0.filter": (5, 6, 3, 3), "hidden.0.0.bias": (1, 5, 3),
              "hidden.1.0.filter": (5, 5, 1, 3), "hidden.1.0.bias": (1, 5, 1)}
    assert all(tuple(state[k].shape) == shapes[k] and state[k].is_contiguous() for k in state)
    # One entry by hand: patch p, position k of the first layer is embed row p*v + t, column h.
    assert state["hidden.0.0.filter"][4, 2, 1, 0] == model.embed[0, 1 * 6 + 2, 4]
    assert state["hidden.1.0.filter"][3, 1, 0, 2] == model.weights[0][0, 3, 2 * 5 + 1]
    back = LocallyConnected.from_reference(state, s=3, norm="std")
    assert_same_state(back.state_dict(), model.state_dict())
    assert_same_state(back.to_reference_state_dict(), state)
    tokens = torch.randint(0, 6, (4, 9))
    assert torch.equal(back(tokens), model(tokens))


def test_seed_draws_the_library_initialisation():
    """seed=k: the tensors the library's hLCN draws after torch.manual_seed(k), in its order."""
    model = LocallyConnected(4, 6, 2, 3, 3, bias=True, seed=12)
    assert_same_state(model.to_reference_state_dict(), library_state(4, 6, 2, 3, 3, True, generator(12),
                                                                     dtype=torch.float32))
    before = torch.get_rng_state()
    loaded = LocallyConnected.from_reference(model.to_reference_state_dict())
    assert torch.equal(torch.get_rng_state(), before) and loaded.seed is None and loaded.norm == "mf"


def test_from_reference_refuses_what_it_cannot_read():
    state = library_state(4, 6, 2, 3, 3, True, generator(4))
    with pytest.raises(ValueError, match=r"s=3, but hidden.0.0.filter has shape \[6, 4, 4, 2\]"):
        LocallyConnected.from_reference(state, s=3)
    with pytest.raises(ValueError, match=r"hidden.1.0.filter must be a floating-point tensor of shape \[6, 6, 2, 2\]"):
        LocallyConnected.from_reference({**state, "hidden.1.0.filter": torch.zeros(6, 6, 3, 2)})
    with pytest.raises(ValueError, match=r"hidden.0.0.bias must be a floating-point tensor of shape \[1, 6, 4\]"):
        LocallyConnected.from_reference({**state, "hidden.0.0.bias": torch.zeros(6, 4)})
    with pytest.raises(ValueError, match=r"hidden.0.0.filter must have shape \[H, v, P, s\]"):
        LocallyConnected.from_reference({**state, "hidden.0.0.filter": torch.zeros(6, 4, 2)})
    assert_reference_keys_checked(LocallyConnected.from_reference, state, "hLCN")


@pytest.mark.parametrize("s,L,bias,norm", [(2, 3, False, "mf"), (3, 2, True, "std"), (2, 1, True, "mf")])
def test_against_the_library_class(s, L, bias, norm):
    lcn = reference_source("lcn")
    torch.manual_seed(11)  # init.py: torch.manual_seed(seed_model), then the model
    ref = lcn.hLCN(s**L, s, 6, 10, 5, L, bias=bias, norm=norm)
    seeded = LocallyConnected(6, 10, s, L, 5, norm=norm, bias=bias, seed=11)
    assert_same_state(seeded.to_reference_state_dict(), ref.state_dict())  # keys, order, shapes, values
    ref = ref.double()
    tokens = torch.randint(0, 6, (9, s**L))
    model = LocallyConnected.from_reference(ref)
    assert model.norm == norm
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), ref(onehot_input(tokens, 6)), rtol=0, atol=1e-12)
    ref.load_state_dict(model.to_reference_state_dict())  # strict


def test_model_checks_its_configuration_and_input():
    model = LocallyConnected(4, 6, 2, 2, 3)
    with pytest.raises(ValueError, match=r"token ids of shape \[B, s\^L=4\]"):
        model(torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids"):
        model(torch.zeros(2, 4))
    # An id >= v would otherwise read the next patch's rows of the first layer's table.
    with pytest.raises(ValueError, match=r"token ids in \[0, v=4\), got 4"):
        model(torch.tensor([[0, 1, 2, 4]]))
    with pytest.raises(ValueError, match="norm must be one of"):
        LocallyConnected(4, 6, 2, 2, 3, norm="ntk")
    with pytest.raises(ValueError, match="activation must be one of"):
        LocallyConnected(4, 6, 2, 2, 3, activation="tanh")
    with pytest.raises(ValueError, match="width must be an int >= 1"):
        LocallyConnected(4, 0, 2, 2, 3)


def test_compiled_model_gives_the_eager_result():
    g = rhmfast.RHM(8, 2, 2, 3, seed=0)
    x, _ = g.sample(16, seed=1)
    compiled = assert_compiled_matches_eager(LocallyConnected(8, 16, 2, 3, 8, bias=True, seed=0), x)
    # Out-of-range ids are refused under compile too, where the eager check does not run: by the kernel's
    # range check, or the reference's indexing.
    with pytest.raises(Exception, match="token ids must be in|out of bounds"):
        compiled(torch.where(x == 7, 8, x))


def test_train_sgd_decreases_the_loss():
    torch.set_num_threads(1)
    g = rhmfast.RHM(8, 2, 2, 3, seed=1)
    model = LocallyConnected(8, 32, 2, 3, 8, norm="mf", seed=0)
    with pytest.raises(ValueError, match="must equal the grammar's"):
        train_sgd(LocallyConnected(8, 32, 2, 2, 8), g, 64, n_test=64, progress=False)
    # lr 1 x lr_scale H = 32: the mean-field net leaves its initial plateau within a few epochs.
    record = train_sgd(model, g, 512, n_test=256, lr=1.0, max_epochs=10, eval_every=1, eval_at_start=True,
                       progress=False)
    losses = [point["train_loss"] for point in record.curve]
    assert record.curve[0]["epoch"] == 0 and len(losses) == 11
    assert losses[-1] < 0.5 * losses[0], losses
    assert record.curve[0]["test_error"] > 0.8 and record.curve[-1]["test_error"] < 0.4, record.curve  # chance: 7/8


@pytest.mark.slow
def test_benchmark_script_at_toy_sizes(tmp_path):
    """benchmarks/bench_hlcn.py end to end (it first checks that the two hLCNs agree): its rows, and its two
    files, whose names say a smoke run."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "bench_hlcn.py")
    subprocess.run([sys.executable, script, "--quick", "--width", "8", "--batch", "4", "--threads", "1", "--device",
                    "cpu", "--out", str(tmp_path)], check=True, capture_output=True, text=True, timeout=600)
    written = sorted(os.listdir(tmp_path))
    assert len(written) == 2 and all(name.startswith("hlcn_cpu") and "_1thread_quick." in name for name in written)
    with open(tmp_path / written[0]) as f:
        run = json.load(f)
    assert [r["config"] for r in run["rows"]] == ["v=32 m=8 s=2 L=3", "v=16 m=4 s=2 L=6"]
    for row in run["rows"]:
        ms = row["ms_per_step"]
        assert set(ms) == {"library hLCN", "rhmfast hLCN", "library hCNN", "rhmfast hCNN"} and min(ms.values()) > 0
        assert row["speedup_hlcn"] == pytest.approx(ms["library hLCN"] / ms["rhmfast hLCN"])
    assert (tmp_path / written[1]).read_text().count("| v=") == 2
