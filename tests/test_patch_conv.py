"""patch_conv: agreement with F.conv1d, gradients, opcheck, input handling and errors."""
import pytest
import torch

from patchconv_samples import (ACTIVATIONS, DEVICE_DTYPES, PATCH_SIZES, SHAPES, TOLERANCE,
                               assert_cuda_matches_cpu, assert_grads_match_float64,
                               assert_refuses_mixed_dtypes_and_devices, assert_within_twice_torch_error, backend,
                               conv1d_reference, conv_sample, cuda, cuda_cases, need_extension)
from rhmfast.ops.patch_conv import patch_conv
from rhmfast.reference import patch_conv as reference

assert backend  # fixture, used by name


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("s", PATCH_SIZES)
def test_matches_conv1d(backend, device, dtype, s):
    for seed, shape in enumerate(SHAPES):
        for activation in ACTIVATIONS:
            use_bias = seed % 2 == 0
            x, w, b, pb = conv_sample(*shape, s, dtype, device, seed=seed, bias=use_bias, pos_bias=not use_bias)
            y = patch_conv(x, w, b, pb, patch_size=s, scale=0.7, activation=activation)
            assert y.shape == (shape[0], shape[1], shape[3]) and y.dtype == dtype and y.is_contiguous()
            expected = conv1d_reference(x, w, b, pb, s, 0.7, activation)
            if dtype in TOLERANCE:
                torch.testing.assert_close(y.double().cpu(), expected.cpu(), **TOLERANCE[dtype])
            else:  # half types (CUDA)
                same_precision = reference.patch_conv(x, w, b, pb, patch_size=s, scale=0.7, activation=activation)
                assert_within_twice_torch_error(y, same_precision, expected)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("wanted", ["all", "x", "weight", "biases"])
def test_backward_matches_autograd_of_conv1d(backend, activation, wanted):
    flags = {"all": (1, 1, 1, 1), "x": (1, 0, 0, 0), "weight": (0, 1, 0, 0), "biases": (0, 0, 1, 1)}[wanted]
    assert_grads_match_float64(lambda *t: patch_conv(*t, patch_size=3, scale=0.5, activation=activation),
                               lambda *t: conv1d_reference(*t, 3, 0.5, activation),
                               conv_sample(4, 6, 9, 13, 3, torch.float32, seed=11), flags)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck(backend, activation):
    x, w, b, pb = conv_sample(2, 3, 4, 5, 2, torch.float64, seed=3, requires_grad=True)
    fn = lambda *a: patch_conv(*a, patch_size=2, scale=0.8, activation=activation)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b, pb))
    assert torch.autograd.gradcheck(lambda x_, w_: patch_conv(x_, w_, patch_size=2, activation=activation), (x, w))


@pytest.mark.parametrize("activation", ["relu", "square"])
def test_opcheck(activation):
    need_extension()
    op = torch.ops.rhmfast.patch_conv.default
    for requires_grad in (False, True):
        x, w, b, pb = conv_sample(3, 4, 5, 6, 2, torch.float32, seed=5, requires_grad=requires_grad)
        torch.library.opcheck(op, (x, w, b, pb, 2, 0.5, activation))
        torch.library.opcheck(op, (x, w, None, None, 2, 1.0, "none"))
    x, w, b, pb = conv_sample(3, 4, 5, 6, 2, torch.float32, seed=6)
    y = torch.ops.rhmfast.patch_conv(x, w, b, pb, 2, 0.5, activation)
    torch.library.opcheck(torch.ops.rhmfast.patch_conv_backward.default,
                          (torch.randn_like(y), x, w, b, pb, y, 2, 0.5, activation, [True, False, True, True]))


def test_non_contiguous_inputs(backend):
    x, w, b, pb = conv_sample(4, 5, 6, 7, 2, torch.float64, seed=8)
    expected = conv1d_reference(x, w, b, pb, 2, 1.0, "relu")
    channels_first = x.transpose(1, 2).contiguous().transpose(1, 2)  # [B, T, C] view of [B, C, T] memory
    batch_strided = torch.stack([x, torch.zeros_like(x)], dim=1).flatten(0, 1)[::2]  # every other sample
    w_t = w.t().contiguous().t()
    for xi in (channels_first, batch_strided):
        torch.testing.assert_close(patch_conv(xi, w_t, b, pb, patch_size=2, activation="relu"), expected)
    grad_y = torch.randn(expected.shape, dtype=expected.dtype)
    x_ref = x.clone().requires_grad_()
    conv1d_reference(x_ref, w, b, pb, 2, 1.0, "relu").backward(grad_y)
    for xi in (channels_first, batch_strided):
        xi = xi.detach().requires_grad_()
        patch_conv(xi, w_t, b, pb, patch_size=2, activation="relu").backward(grad_y)
        torch.testing.assert_close(xi.grad, x_ref.grad)


def test_errors(backend):
    x, w, b, pb = conv_sample(2, 3, 4, 5, 2, torch.float32)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        patch_conv(x[:, :5], w, patch_size=2)
    with pytest.raises(ValueError, match="columns but patch_size"):
        patch_conv(x[..., :3], w, patch_size=2)
    with pytest.raises(ValueError, match="bias must have shape"):
        patch_conv(x, w, b[:4], patch_size=2)
    with pytest.raises(ValueError, match="pos_bias must have shape"):
        patch_conv(x, w, None, pb[:2], patch_size=2)
    with pytest.raises(ValueError, match="activation must be"):
        patch_conv(x, w, patch_size=2, activation="gelu")
    with pytest.raises(ValueError, match="x must have shape"):
        patch_conv(x[0], w, patch_size=2)
    with pytest.raises(TypeError, match="x must be"):
        patch_conv(x.to(torch.bfloat16), w.to(torch.bfloat16), patch_size=2)
    assert_refuses_mixed_dtypes_and_devices(lambda *t: patch_conv(*t, patch_size=2), x, w, b)
    with pytest.raises(ValueError, match="pos_bias is on meta, weight on cpu"):
        patch_conv(x, w, b, pb.to("meta"), patch_size=2)


def test_backward_op_checks_its_gradient_argument():
    """The backward op (kernel or fake kernel) refuses a grad_out of another shape or device."""
    need_extension()
    x, w, b, pb = conv_sample(2, 3, 4, 5, 2, torch.float32)
    op = torch.ops.rhmfast.patch_conv_backward
    mask = [True, True, True, False]
    with pytest.raises(ValueError, match="grad_out must have the output's shape"):
        op(torch.randn(2, 4, 5), x, w, b, pb, None, 2, 1.0, "none", mask)
    with pytest.raises(ValueError, match="grad_out is on meta, the weights on cpu"):
        op(torch.randn(2, 3, 5, device="meta"), x, w, b, pb, None, 2, 1.0, "none", mask)
    with pytest.raises(ValueError, match="grad of pos_bias asked for but pos_bias is None"):
        op(torch.randn(2, 3, 5, device="meta"), x.to("meta"), w.to("meta"), None, None, None, 2, 1.0, "none",
           [True, True, False, True])


def test_double_backward_raises():
    need_extension()
    x, w, b, pb = conv_sample(2, 3, 4, 5, 2, torch.float64, requires_grad=True)
    y = torch.ops.rhmfast.patch_conv(x, w, b, pb, 2, 1.0, "square")  # the op itself, whatever the backend
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        gx.sum().backward()


def test_backward_is_deterministic(backend):
    x, w, b, pb = conv_sample(8, 16, 32, 24, 2, torch.float32, seed=21, requires_grad=True)
    runs = []
    for _ in range(3):
        y = patch_conv(x, w, b, pb, patch_size=2, activation="relu")
        runs.append(torch.autograd.grad(y, (x, w, b, pb), torch.ones_like(y)))
    for run in runs[1:]:
        for g, g0 in zip(run, runs[0]):
            assert torch.equal(g, g0)


@cuda_cases
def test_cuda_matches_cpu(dtype, activation):
    inputs = conv_sample(16, 32, 64, 48, 2, torch.float64, seed=4, requires_grad=True)
    cfg = dict(patch_size=2, scale=0.5, activation=activation)
    assert_cuda_matches_cpu(lambda *t: patch_conv(*t, **cfg), lambda *t: reference.patch_conv(*t, **cfg), inputs, dtype)


def empty_sequence_grads(device):
    """Gradients of patch_conv on sequences of length 0 (an empty batch of positions)."""
    x, weight, b, pb = conv_sample(3, 0, 5, 4, 2, torch.float32, device=device, requires_grad=True)
    y = patch_conv(x, weight, b, pb, patch_size=2, activation="relu")
    return torch.autograd.grad(y, (x, weight, b, pb), torch.ones_like(y))


def test_empty_sequence_gradients_are_empty_sums():
    grad_x, grad_w, grad_b, grad_pb = empty_sequence_grads("cpu")
    assert grad_x.shape == (3, 0, 5) and grad_pb.shape == (0, 4)
    assert torch.equal(grad_w, torch.zeros(4, 10)) and torch.equal(grad_b, torch.zeros(4))


@pytest.mark.cuda
@cuda
def test_cuda_empty_sequence_gradients_match_cpu():
    """The bias gradient of an empty sequence is an empty sum: zeros, written although no position is."""
    for got, want in zip(empty_sequence_grads("cuda"), empty_sequence_grads("cpu")):
        assert got.is_cuda and torch.equal(got.cpu(), want)
