"""rhmfast.nn: PatchConv1d as a drop-in nn.Conv1d, convert(), TokenPatchEmbedding, torch.compile."""
import pytest
import torch
from torch import nn

from patchconv_samples import TOLERANCE, backend, generator
from rhmfast.nn import PatchConv1d, TokenPatchEmbedding, convert

assert backend  # fixture, used by name

ACT = {"none": lambda z: z, "relu": torch.relu, "square": lambda z: z * z}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("s", [2, 3, 4])
def test_patch_conv1d_matches_conv1d(backend, dtype, s):
    torch.manual_seed(s)
    for c_in, c_out, length, activation, bias in ((3, 5, 4 * s, "relu", True), (7, 2, 3 * s + 1, "square", False),
                                                  (1, 9, s, "none", True)):
        conv = nn.Conv1d(c_in, c_out, s, stride=s, bias=bias, dtype=dtype)
        layer = PatchConv1d.from_conv1d(conv, activation=activation)
        x = torch.randn(4, c_in, length, dtype=dtype)
        torch.testing.assert_close(layer(x), ACT[activation](conv(x)), **TOLERANCE[dtype])
        torch.testing.assert_close(layer(x[0]), ACT[activation](conv(x[0])), **TOLERANCE[dtype])  # unbatched
        nlc = PatchConv1d.from_conv1d(conv, activation=activation, layout="nlc")
        torch.testing.assert_close(nlc(x.transpose(1, 2).contiguous()), ACT[activation](conv(x)).transpose(1, 2),
                                   **TOLERANCE[dtype])


def test_inputs_shorter_than_a_patch_are_refused_like_conv1d():
    conv = nn.Conv1d(3, 4, 3, stride=3)
    layer = PatchConv1d.from_conv1d(conv)
    x = torch.randn(2, 3, 2)
    with pytest.raises(RuntimeError):
        conv(x)
    with pytest.raises(ValueError, match="input length >= patch_size = 3, got 2"):
        layer(x)


def test_gradients_match_conv1d(backend):
    torch.manual_seed(0)
    conv = nn.Conv1d(6, 5, 3, stride=3, dtype=torch.float64)
    layer = PatchConv1d.from_conv1d(conv, activation="relu")
    x = torch.randn(4, 6, 12, dtype=torch.float64, requires_grad=True)
    grads = torch.autograd.grad(layer(x).square().sum(), (x, layer.weight, layer.bias))
    expected = torch.autograd.grad(torch.relu(conv(x)).square().sum(), (x, conv.weight, conv.bias))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)
    assert grads[1].stride() == layer.weight.stride()  # grad keeps the parameter's (k, c) layout


def test_parameters_and_checkpoints_interchange_with_conv1d():
    conv = nn.Conv1d(4, 6, 2, stride=2)
    layer = PatchConv1d(4, 6, 2)
    assert [(n, p.shape) for n, p in conv.named_parameters()] == [(n, p.shape) for n, p in layer.named_parameters()]
    layer.load_state_dict(conv.state_dict())
    x = torch.randn(3, 4, 10)
    torch.testing.assert_close(layer(x), conv(x))
    other = nn.Conv1d(4, 6, 2, stride=2)
    other.load_state_dict(layer.state_dict())
    torch.testing.assert_close(other(x), conv(x))
    # Loading keeps the GEMM-friendly layout: the [C_out, s*C_in] operand stays a view.
    assert layer.gemm_weight().data_ptr() == layer.weight.data_ptr() and layer.gemm_weight().is_contiguous()
    assert PatchConv1d(4, 6, 2, bias=False).bias is None


def test_convert_replaces_only_patchwise_convs(backend):
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv1d(3, 8, 2, stride=2), nn.ReLU(),
        nn.Conv1d(8, 8, 3, stride=1, padding=1),          # overlapping: stays
        nn.Conv1d(8, 8, 2, stride=2, groups=2),           # grouped: stays
        nn.Sequential(nn.Conv1d(8, 4, 2, stride=2, bias=False)),  # nested: replaced
        nn.Conv1d(4, 4, 2, stride=2, dilation=2),         # dilated: stays
    )
    x = torch.randn(2, 3, 32)
    expected = model(x)
    assert convert(model) is model
    kinds = [type(m).__name__ for m in (model[0], model[2], model[3], model[4][0], model[5])]
    assert kinds == ["PatchConv1d", "Conv1d", "Conv1d", "PatchConv1d", "Conv1d"]
    torch.testing.assert_close(model(x), expected)
    with pytest.raises(ValueError, match="patchwise layer"):
        PatchConv1d.from_conv1d(nn.Conv1d(3, 3, 2, stride=1))


def test_token_embedding_from_patch_conv(backend):
    gen = generator(2)
    layer = PatchConv1d(10, 7, 3, activation="relu", scale=0.5, dtype=torch.float64)
    tokens = torch.randint(0, 10, (4, 9), generator=gen, dtype=torch.uint8)
    one_hot = nn.functional.one_hot(tokens.long(), 10).double().transpose(1, 2)
    emb = TokenPatchEmbedding.from_patch_conv(layer)
    torch.testing.assert_close(emb(tokens), layer(one_hot))
    conv = nn.Conv1d(10, 7, 3, stride=3, dtype=torch.float64)
    emb = TokenPatchEmbedding.from_patch_conv(conv, layout="nlc")
    torch.testing.assert_close(emb(tokens), conv(one_hot).transpose(1, 2))
    with pytest.raises(ValueError, match="layout must be"):
        TokenPatchEmbedding(10, 7, 3, layout="nct")


class TinyHCNN(nn.Module):
    """Token layer, two patch layers (one channels-first, one channels-last), mean, readout."""

    def __init__(self):
        super().__init__()
        self.embed = TokenPatchEmbedding(8, 16, 2, activation="relu")
        self.mid = PatchConv1d(16, 16, 2, activation="relu")
        self.top = PatchConv1d(16, 12, 2, activation="square", layout="nlc", bias=False)
        self.readout = nn.Linear(12, 3)

    def forward(self, tokens):
        h = self.mid(self.embed(tokens))          # [B, C, T] (channels-last memory)
        h = self.top(h.transpose(1, 2))            # [B, T, C]
        return self.readout(h.mean(dim=1))


def test_torch_compile_fullgraph_matches_eager(backend):
    torch.manual_seed(3)
    model = TinyHCNN()
    tokens = torch.randint(0, 8, (5, 16))
    eager = model(tokens)
    eager_grads = torch.autograd.grad(eager.sum(), list(model.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(tokens)
    torch.testing.assert_close(out, eager)
    for g, e in zip(torch.autograd.grad(out.sum(), list(model.parameters())), eager_grads):
        torch.testing.assert_close(g, e)
    explanation = torch._dynamo.explain(model)(tokens)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_torch_export_keeps_the_ops_and_the_result(backend):
    """torch.export gives a graph that calls rhmfast's ops (not a decomposition) and computes the same."""
    torch.manual_seed(4)
    model = TinyHCNN().eval()
    tokens = torch.randint(0, 8, (5, 16))
    exported = torch.export.export(model, (tokens,))
    assert torch.equal(exported.module()(tokens), model(tokens))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    if backend == "extension":
        assert {"rhmfast.token_patch_embed.default", "rhmfast.patch_conv.default"} <= targets, targets
