"""token_patch_embed: equal to patch_conv on the one-hot input, gradients, determinism, opcheck, errors."""
import pytest
import torch

from patchconv_samples import (ACTIVATIONS, DEVICE_DTYPES, FLOAT_DTYPES, PATCH_SIZES, TOKEN_DTYPES, TOLERANCE,
                               assert_cuda_matches_cpu, assert_within_twice_torch_error, backend, cuda,
                               need_extension, one_hot_weight,
                               token_sample)
from rhmfast.ops.patch_conv import patch_conv
from rhmfast.ops.token_patch_embed import token_patch_embed
from rhmfast.reference import token_patch_embed as reference

assert backend  # fixture, used by name

CASES = [(1, 1, 2, 1), (3, 5, 7, 11), (4, 6, 32, 19)]  # (batch, patches per row, vocab, C_out)


def one_hot(tokens, vocab, dtype):
    return torch.nn.functional.one_hot(tokens.long(), vocab).to(dtype)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("s", PATCH_SIZES)
@pytest.mark.parametrize("token_dtype", TOKEN_DTYPES)
def test_equals_patch_conv_on_one_hot(backend, device, dtype, s, token_dtype):
    for seed, (batch, n, vocab, c_out) in enumerate(CASES):
        activation = ACTIVATIONS[seed % 3]
        tokens, table, b, pb = token_sample(batch, n, vocab, c_out, s, token_dtype, dtype, device, seed=seed)
        y = token_patch_embed(tokens, table, b, pb, patch_size=s, scale=0.6, activation=activation)
        expected = patch_conv(one_hot(tokens, vocab, torch.float64), one_hot_weight(table).double(), b.double(),
                              pb.double(), patch_size=s, scale=0.6, activation=activation)
        assert y.shape == (batch, n, c_out) and y.dtype == dtype and y.is_contiguous()
        if dtype in TOLERANCE:
            torch.testing.assert_close(y.double(), expected, **TOLERANCE[dtype])
        else:  # half types (CUDA)
            same_precision = reference.token_patch_embed(tokens, table, b, pb, patch_size=s, scale=0.6,
                                                         activation=activation)
            assert_within_twice_torch_error(y, same_precision, expected)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradients_equal_one_hot_patch_conv(backend, activation):
    tokens, table, b, pb = token_sample(5, 4, 6, 7, 3, torch.int64, torch.float64, seed=2, requires_grad=True)
    y = token_patch_embed(tokens, table, b, pb, patch_size=3, scale=0.5, activation=activation)
    grad_out = torch.randn_like(y)
    grads = torch.autograd.grad(y, (table, b, pb), grad_out)
    expected = patch_conv(one_hot(tokens, 6, torch.float64), one_hot_weight(table), b, pb, patch_size=3, scale=0.5,
                          activation=activation)
    for g, e in zip(grads, torch.autograd.grad(expected, (table, b, pb), grad_out)):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck(backend, activation):
    tokens, table, b, pb = token_sample(3, 4, 5, 6, 2, torch.uint8, torch.float64, seed=4, requires_grad=True)
    fn = lambda *a: token_patch_embed(tokens, *a, patch_size=2, scale=0.7, activation=activation)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (table, b, pb))
    assert torch.autograd.gradcheck(lambda t: token_patch_embed(tokens, t, patch_size=2, activation=activation),
                                    (table,))


def test_opcheck():
    need_extension()
    for requires_grad in (False, True):
        tokens, table, b, pb = token_sample(3, 4, 5, 6, 2, torch.int32, torch.float32, seed=5,
                                            requires_grad=requires_grad)
        torch.library.opcheck(torch.ops.rhmfast.token_patch_embed.default, (tokens, table, b, pb, 2, 0.5, "relu"))
        torch.library.opcheck(torch.ops.rhmfast.token_patch_embed.default, (tokens, table, None, None, 2, 1.0, "square"))
    table, b, pb = table.detach(), b.detach(), pb.detach()
    y = torch.ops.rhmfast.token_patch_embed(tokens, table, b, pb, 2, 0.5, "relu")
    torch.library.opcheck(torch.ops.rhmfast.token_patch_embed_backward.default,
                          (torch.randn_like(y), tokens, table, b, pb, y, 2, 0.5, "relu", [True, True, False]))


@pytest.mark.parametrize("s", PATCH_SIZES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES["cpu"])
@pytest.mark.parametrize("mask", [[True, True, True], [True, False, True], [False, True, True], [False, True, False]])
def test_relu_backward_recomputes_its_mask_without_out(dtype, s, mask):
    """Given no forward output, relu's backward takes its mask from the recomputed pre-activation: the
    same gradients, bit for bit, as from the output (bad token ids are still refused)."""
    need_extension()
    # 1073 rows (2 blocks); 45 channels: whole vectors and a scalar tail
    tokens, table, b, pb = token_sample(37, 29, 6, 45, s, torch.uint8, dtype, seed=7)
    y = torch.ops.rhmfast.token_patch_embed(tokens, table, b, pb, s, 0.4, "relu")
    assert 0 < (y == 0).float().mean() < 1  # the mask matters
    grad = torch.randn_like(y)
    with_out = torch.ops.rhmfast.token_patch_embed_backward(grad, tokens, table, b, pb, y, s, 0.4, "relu", mask)
    without = torch.ops.rhmfast.token_patch_embed_backward(grad, tokens, table, b, pb, None, s, 0.4, "relu", mask)
    for g, h in zip(with_out, without):
        assert torch.equal(g, h)
    exact = [t.double().clone().requires_grad_() for t in (table, b, pb)]
    y64 = reference.token_patch_embed(tokens, *exact, patch_size=s, scale=0.4, activation="relu")
    for g, e, wanted in zip(without, torch.autograd.grad(y64, exact, grad.double()), mask):
        if wanted:
            torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4)
    torch.library.opcheck(torch.ops.rhmfast.token_patch_embed_backward.default,
                          (grad, tokens, table, b, pb, None, s, 0.4, "relu", mask))
    tokens[5, 4] = 6
    with pytest.raises(ValueError, match=r"token ids must be in \[0, vocab_size=6\)"):
        torch.ops.rhmfast.token_patch_embed_backward(grad, tokens, table, b, pb, None, s, 0.4, "relu", mask)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_table_gradient_is_deterministic(backend, activation):
    # Few distinct tokens, many positions (2077 rows: several row blocks, the last one ragged): every
    # table row receives hundreds of additions, whose order must not depend on the thread count.
    tokens, table, b, pb = token_sample(67, 31, 3, 80, 2, torch.int64, torch.float32, seed=9, requires_grad=True)
    grad = torch.randn(67, 31, 80, generator=torch.Generator().manual_seed(1))
    runs = []
    for n_threads in (2, 1, 2):  # the conftest puts the session's thread count back
        torch.set_num_threads(n_threads)
        y = token_patch_embed(tokens, table, b, pb, patch_size=2, scale=0.7, activation=activation)
        runs.append(torch.autograd.grad(y, (table, b, pb), grad))
    if backend == "extension":  # the reference's scatter-add (torch's index backward) promises no order
        for run in runs[1:]:
            for g, g0 in zip(run, runs[0]):
                assert torch.equal(g, g0)
    exact = [t.detach().double().requires_grad_() for t in (table, b, pb)]
    y64 = token_patch_embed(tokens, *exact, patch_size=2, scale=0.7, activation=activation)
    for g, e in zip(runs[0], torch.autograd.grad(y64, exact, grad.double())):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-3)


def test_non_contiguous_tokens(backend):
    tokens, table, b, pb = token_sample(4, 3, 5, 6, 2, torch.int64, torch.float64, seed=1)
    strided = tokens.t().contiguous().t()
    assert not strided.is_contiguous()
    torch.testing.assert_close(token_patch_embed(strided, table, b, pb, patch_size=2),
                               token_patch_embed(tokens, table, b, pb, patch_size=2))


@pytest.mark.parametrize("bad", [-1, 5, 200])
def test_out_of_range_tokens_raise(backend, bad):
    tokens, table, b, pb = token_sample(2, 3, 5, 4, 2, torch.int16, torch.float32, seed=0)
    tokens[1, 3] = bad
    with pytest.raises(ValueError, match=r"token ids must be in \[0, vocab_size=5\)"):
        token_patch_embed(tokens, table, b, pb, patch_size=2)


def test_backward_op_rejects_out_of_range_tokens():
    need_extension()
    tokens, table, b, pb = token_sample(2, 3, 5, 4, 2, torch.int64, torch.float32, seed=0)
    tokens[0, 0] = 1 << 40
    with pytest.raises(ValueError, match="token ids must be in"):
        torch.ops.rhmfast.token_patch_embed_backward(torch.ones(2, 3, 4), tokens, table, None, None, None, 2, 1.0,
                                                     "none", [True, False, False])


def test_errors(backend):
    tokens, table, b, pb = token_sample(2, 3, 5, 4, 2, torch.int64, torch.float32)
    with pytest.raises(TypeError, match="tokens must be"):
        token_patch_embed(tokens.float(), table, patch_size=2)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        token_patch_embed(tokens[:, :5], table, patch_size=2)
    with pytest.raises(ValueError, match="patch positions but patch_size"):
        token_patch_embed(tokens, table, patch_size=3)
    with pytest.raises(ValueError, match="pos_bias must have shape"):
        token_patch_embed(tokens, table, b, pb[:1], patch_size=2)
    with pytest.raises(TypeError, match="table must be"):
        token_patch_embed(tokens, table.half(), patch_size=2)
    with pytest.raises(TypeError, match="bias has dtype"):
        token_patch_embed(tokens, table, b.double(), patch_size=2)
    with pytest.raises(ValueError, match="tokens are on cpu but table is on meta"):  # meta: a second device
        token_patch_embed(tokens, table.to("meta"), patch_size=2)
    with pytest.raises(ValueError, match="bias is on meta, table on cpu"):
        token_patch_embed(tokens, table, b.to("meta"), patch_size=2)
    if backend == "extension":  # the backward op's fake kernel checks too
        with pytest.raises(ValueError, match="grad_out is on meta, the weights on cpu"):
            torch.ops.rhmfast.token_patch_embed_backward(torch.randn(2, 3, 4, device="meta"), tokens, table, b, pb,
                                                         None, 2, 1.0, "none", [True, True, False])


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    tokens, table, b, pb = token_sample(32, 16, 32, 64, 2, torch.uint8, torch.float64, seed=3, requires_grad=True)
    cfg = dict(patch_size=2, scale=0.5, activation="relu")

    def op(*floats):
        return token_patch_embed(tokens.to(floats[0].device), *floats, **cfg)

    def reference_op(*floats):
        return reference.token_patch_embed(tokens.to(floats[0].device), *floats, **cfg)

    args, grads, grad_cuda = assert_cuda_matches_cpu(op, reference_op, (table, b, pb), dtype)
    again = torch.autograd.grad(op(*args), args, grad_cuda)
    assert all(torch.equal(g, h) for g, h in zip(grads, again))  # deterministic table gradient on the GPU


def test_double_backward_raises():
    need_extension()
    tokens, table, b, pb = token_sample(2, 3, 5, 4, 2, torch.int64, torch.float64, requires_grad=True)
    y = torch.ops.rhmfast.token_patch_embed(tokens, table, b, pb, 2, 1.0, "square")  # the op, whatever the backend
    (g_table,) = torch.autograd.grad(y.sum(), table, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        g_table.sum().backward()


def empty_sequence_grads(device):
    """Gradients of token_patch_embed on sequences of length 0."""
    tokens, table, b, pb = token_sample(3, 0, 6, 4, 2, torch.int64, torch.float32, device=device, requires_grad=True)
    y = token_patch_embed(tokens, table, b, pb, patch_size=2, activation="relu")
    return torch.autograd.grad(y, (table, b, pb), torch.ones_like(y))


def test_empty_sequence_gradients_are_empty_sums():
    grad_table, grad_b, grad_pb = empty_sequence_grads("cpu")
    assert torch.equal(grad_table, torch.zeros(2, 6, 4)) and torch.equal(grad_b, torch.zeros(4))
    assert grad_pb.shape == (0, 4)


@pytest.mark.cuda
@cuda
def test_cuda_empty_sequence_gradients_match_cpu():
    for got, want in zip(empty_sequence_grads("cuda"), empty_sequence_grads("cpu")):
        assert got.is_cuda and torch.equal(got.cpu(), want)
