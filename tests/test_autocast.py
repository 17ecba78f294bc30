"""The patchwise layers and locally_connected inside torch.autocast (csrc/autocast.cpp): mixed-precision
inputs are cast to one type before the kernels run (CPU: float32; CUDA: the autocast dtype), gradients flow
back through the casts, float64 is left alone, and torch.compile traces it."""
import pytest
import torch
from torch import nn

from patchconv_samples import HAVE_CUDA, conv_sample, need_extension, token_sample
from rhmfast.models import HierarchicalCNN
from rhmfast.nn import PatchConv1d, TokenPatchEmbedding
from rhmfast.ops.locally_connected import locally_connected
from rhmfast.ops.patch_conv import patch_conv
from rhmfast.ops.patch_conv_stack import patch_conv_stack
from rhmfast.ops.token_patch_embed import token_patch_embed


@pytest.fixture(autouse=True)
def extension():
    need_extension()


def layer_case(layer, device="cpu", seed=1):
    """float32 inputs (x, weight, biases...) of a layer taking channels-last x, and the layer (relu) on them."""
    if layer == "patch_conv":
        x, w, b, pb = conv_sample(3, 5, 6, 7, 2, torch.float32, device, seed=seed)
        return (x, w, b, pb), lambda *t: patch_conv(*t, patch_size=2, scale=0.5, activation="relu")
    gen = torch.Generator().manual_seed(seed)  # locally_connected: x [B, P*s, C_in], weight [P, C_out, s*C_in]
    x, w, b = (torch.randn(shape, generator=gen).to(device) for shape in ((3, 10, 6), (5, 7, 12), (5, 7)))
    return (x, w, b), lambda *t: locally_connected(*t, patch_size=2, scale=0.5, activation="relu")


@pytest.mark.parametrize("layer", ["patch_conv", "locally_connected"])
def test_cpu_autocast_runs_the_layer_in_float32(layer):
    """bfloat16 activations with float32 weights: computed as the float32 op on the same (rounded) values."""
    (x, *params), op = layer_case(layer)
    x_half = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = op(x_half, *params)
    x_exact = x_half.detach().float().requires_grad_()
    expected = op(x_exact, *params)
    assert y.dtype == torch.float32 and torch.equal(y, expected)
    grad = torch.randn_like(y)
    y.backward(grad)
    expected.backward(grad)
    assert x_half.grad.dtype == torch.bfloat16 and torch.equal(x_half.grad, x_exact.grad.bfloat16())


def test_cpu_autocast_token_layer_and_stack():
    tokens, table, b, pb = token_sample(4, 3, 5, 6, 2, torch.int64, torch.float32, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = token_patch_embed(tokens, table.bfloat16(), b, pb, patch_size=2, activation="relu")
    assert y.dtype == torch.float32
    assert torch.equal(y, token_patch_embed(tokens, table.bfloat16().float(), b, pb, patch_size=2, activation="relu"))
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 5, (3, 8), generator=gen)
    table = torch.randn(2, 5, 4, generator=gen, dtype=torch.bfloat16)
    weights = [torch.randn(6, 8, generator=gen), torch.randn(3, 12, generator=gen, dtype=torch.bfloat16)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = patch_conv_stack(tokens, table, weights, patch_size=2, scales="hcnn")
    expected = patch_conv_stack(tokens, table.float(), [w.float() for w in weights], patch_size=2, scales="hcnn")
    assert out.dtype == torch.float32 and torch.equal(out, expected)


def test_modules_after_a_lower_precision_layer():
    """The drop-in promise under autocast: a PatchConv1d after an nn.Linear (which autocast runs in
    bfloat16) works where the kernels alone would refuse the mixed dtypes, and matches nn.Conv1d."""
    torch.manual_seed(0)
    linear, conv = nn.Linear(12, 12), nn.Conv1d(8, 16, 2, stride=2)
    layer = PatchConv1d.from_conv1d(conv, activation="relu")
    x = torch.randn(4, 8, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = linear(x)
        assert h.dtype == torch.bfloat16
        ours, theirs = layer(h), torch.relu(conv(h))
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs.float(), rtol=2e-2, atol=2e-2)  # theirs computed in bfloat16
    ours.sum().backward()
    assert linear.weight.grad is not None and layer.weight.grad.dtype == torch.float32
    with pytest.raises(TypeError, match="x must be float32 or float64"):  # the same call outside autocast
        layer(linear(x).bfloat16())


def test_float64_is_left_alone():
    x, w, b, pb = conv_sample(2, 3, 4, 5, 2, torch.float64, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = patch_conv(x, w, b, pb, patch_size=2)
    assert y.dtype == torch.float64 and torch.equal(y, patch_conv(x, w, b, pb, patch_size=2))


def test_compiled_model_under_autocast_matches_eager():
    torch.manual_seed(5)
    model = HierarchicalCNN(8, 16, 2, 3, 8)
    emb = TokenPatchEmbedding(8, 16, 2, activation="relu")
    tokens = torch.randint(0, 8, (6, 8))

    def run(tokens):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(tokens), emb(tokens)

    eager = run(tokens)
    compiled = torch.compile(run, fullgraph=True)(tokens)
    for a, b in zip(eager, compiled):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b)


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA device and rhmfast's CUDA kernels")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layer", ["patch_conv", "locally_connected"])
def test_cuda_autocast_computes_in_the_autocast_dtype(dtype, layer):
    inputs, op = layer_case(layer, "cuda", seed=6)
    with torch.autocast("cuda", dtype=dtype):
        y = op(*inputs)
    assert y.dtype == dtype
    assert torch.equal(y, op(*(t.to(dtype) for t in inputs)))
