"""The patchwise layers under torch.func transforms (grad, vmap, jacrev): inside a transform they run the
PyTorch reference, which the transforms support (the ops' C++ autograd cannot take part), so per-sample
gradients and Jacobians of rhmfast models work and agree with plain autograd."""
import pytest
import torch
from torch.func import functional_call, grad, jacrev, vmap

from patchconv_samples import conv_sample, need_extension, token_sample
from rhmfast.models import HierarchicalCNN
from rhmfast.ops.patch_conv import patch_conv
from rhmfast.ops.token_patch_embed import token_patch_embed


@pytest.fixture(autouse=True)
def extension():
    need_extension()  # without it every call is the reference anyway


def test_grad_of_patch_conv_equals_autograd():
    x, w, b, pb = conv_sample(3, 4, 5, 6, 2, torch.float64, seed=1)

    def loss(weight, bias):
        return patch_conv(x, weight, bias, pb, patch_size=2, scale=0.5, activation="relu").square().sum()

    g_w, g_b = grad(loss, argnums=(0, 1))(w, b)
    w_, b_ = w.clone().requires_grad_(), b.clone().requires_grad_()
    loss(w_, b_).backward()  # outside the transform: the compiled op and its C++ autograd
    torch.testing.assert_close(g_w, w_.grad)
    torch.testing.assert_close(g_b, b_.grad)


def test_per_sample_gradients_of_an_hcnn(monkeypatch):
    torch.manual_seed(2)
    model = HierarchicalCNN(8, 16, 2, 3, 8).double()
    params = {k: p.detach() for k, p in model.named_parameters()}
    tokens, labels = torch.randint(0, 8, (5, 8)), torch.randint(0, 8, (5,))

    def loss(p, t, y):
        return torch.nn.functional.cross_entropy(functional_call(model, p, (t[None],)), y[None])

    calls = []
    real = torch.ops.rhmfast.patch_conv_stack
    monkeypatch.setattr(torch.ops.rhmfast, "patch_conv_stack", lambda *a: calls.append(1) or real(*a),
                        raising=False)
    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, tokens, labels)
    assert calls == []  # the transforms ran the reference
    for i in range(5):
        model.zero_grad()
        loss(dict(model.named_parameters()), tokens[i], labels[i]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad)
    assert calls  # and plain autograd the compiled op


def test_jacobian_of_the_token_layer():
    tokens, table, b, pb = token_sample(2, 3, 5, 4, 2, torch.int64, torch.float64, seed=3)
    jacobian = jacrev(lambda tb: token_patch_embed(tokens, tb, b, pb, patch_size=2, activation="relu"))(table)
    expected = torch.autograd.functional.jacobian(
        lambda tb: token_patch_embed(tokens, tb, b, pb, patch_size=2, activation="relu"), table)
    torch.testing.assert_close(jacobian, expected)


def test_vmap_over_a_batch_of_inputs_equals_the_op():
    x, w, b, pb = conv_sample(4, 3, 6, 5, 3, torch.float32, seed=4)
    stacked = x.reshape(2, 2, *x.shape[1:])
    y = vmap(lambda xi: patch_conv(xi, w, b, pb, patch_size=3, activation="square"))(stacked)
    torch.testing.assert_close(y.reshape(4, *y.shape[2:]), patch_conv(x, w, b, pb, patch_size=3, activation="square"))


def test_out_of_range_tokens_still_fail_inside_a_transform():
    tokens, table, _, _ = token_sample(1, 2, 5, 3, 2, torch.int64, torch.float32, seed=5)
    tokens[0, 1] = 9
    with pytest.raises(IndexError, match="out of bounds"):
        grad(lambda tb: token_patch_embed(tokens, tb, patch_size=2).sum())(table)
