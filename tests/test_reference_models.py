"""The 2024 reference library's models (random-hierarchy-model, models/cnn.py and models/fcn.py) in rhmfast:
HierarchicalCNN / FullyConnected.from_reference and to_reference_state_dict in the reference's own key names,
checked against a transcription of its forward passes written here (and, where the library's source is at
hand, against its own classes), and rhmfast.nn.convert's warning when it swaps nothing."""
import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rhmfast
from model_checks import assert_reference_keys_checked, assert_same_state, onehot_input, reference_source
from rhmfast.models import FullyConnected, HierarchicalCNN
from rhmfast.nn import convert


# ---- transcriptions of the reference's forward passes ---------------------------------------------------

def reference_hcnn(x, state, norm):
    """models/cnn.py hCNN.forward: per layer relu(F.conv1d(x, filter, bias, stride=s) / sqrt(C_in*s)), mean over
    positions, x @ readout / norm with norm = sqrt(H) ("std") or H ("mf")."""
    L = sum(1 for key in state if key.endswith(".filter"))
    for l in range(L):
        w = state[f"hidden.{l}.0.filter"]
        x = torch.relu(F.conv1d(x, w, state.get(f"hidden.{l}.0.bias"), stride=w.shape[2])
                       / (w.shape[1] * w.shape[2]) ** 0.5)
    width = state["readout"].shape[0]
    return x.mean(dim=[-1]) @ state["readout"] / (width ** 0.5 if norm == "std" else width)


def reference_fcn(x, state, d):
    """models/fcn.py on init.py's input (features.transpose(1, 2).flatten(1), position-major): MLP: per layer
    relu(F.linear(x, weight, bias) / sqrt(in)), x @ readout / H (init.py's norm='mf'); Perceptron (depth 0):
    x @ readout / sqrt(num_tokens)."""
    x = x.transpose(1, 2).flatten(start_dim=1)
    L = sum(1 for key in state if key.endswith(".weight"))
    for l in range(L):
        x = torch.relu(F.linear(x, state[f"hidden.{l}.0.weight"], state.get(f"hidden.{l}.0.bias")) / x.size(-1) ** 0.5)
    return x @ state["readout"] / (state["readout"].shape[0] if L else d ** 0.5)


def random_hcnn_state(v, width, s, L, n_classes, bias, gen, dtype=torch.float64):
    """A reference hCNN state dict, keys in its state_dict's order (own readout first), N(0,1) entries."""
    state = {"readout": None}
    for l in range(L):
        state[f"hidden.{l}.0.filter"] = torch.randn(width, v if l == 0 else width, s, generator=gen, dtype=dtype)
        if bias:
            state[f"hidden.{l}.0.bias"] = torch.randn(width, generator=gen, dtype=dtype)
    state["readout"] = torch.randn(width, n_classes, generator=gen, dtype=dtype)
    return state


def random_fcn_state(n_in, width, depth, n_classes, bias, gen, dtype=torch.float64):
    state = {"readout": None}
    for l in range(depth):
        state[f"hidden.{l}.0.weight"] = torch.randn(width, n_in if l == 0 else width, generator=gen, dtype=dtype)
        if bias:
            state[f"hidden.{l}.0.bias"] = torch.randn(width, generator=gen, dtype=dtype)
    state["readout"] = torch.randn(width if depth else n_in, n_classes, generator=gen, dtype=dtype)
    return state


# ---- the hCNN --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("s", [2, 3])
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("norm", ["mf", "std"])
def test_hcnn_from_reference_state_matches_its_forward(s, L, bias, norm):
    gen = torch.Generator().manual_seed(100 * s + 10 * L + bias)
    v, width, n_classes = 5, 9, 4
    state = random_hcnn_state(v, width, s, L, n_classes, bias, gen)
    tokens = torch.randint(0, v, (13, s**L), generator=gen)
    expected = reference_hcnn(onehot_input(tokens, v), state, norm)
    model = HierarchicalCNN.from_reference(state, norm=norm)
    assert (model.v, model.width, model.s, model.L, model.n_classes, model.norm) == (v, width, s, L, n_classes, norm)
    assert (model.biases is not None) == bias and model.embed.dtype == torch.float64
    assert model.lr_scale == (width if norm == "mf" else 1.0)
    torch.testing.assert_close(model(tokens), expected, rtol=0, atol=1e-12)
    # float32 parameters, the reference in float64.
    model32 = HierarchicalCNN.from_reference({k: t.float() for k, t in state.items()}, s=s, norm=norm)
    torch.testing.assert_close(model32(tokens).double(), expected, rtol=0, atol=2e-5)
    # Both ways, bit for bit, in the reference's key order.
    assert_same_state(model.to_reference_state_dict(), state)
    back = HierarchicalCNN.from_reference(model.to_reference_state_dict(), norm=norm)
    assert_same_state(back.state_dict(), model.state_dict())
    assert torch.equal(back(tokens), model(tokens))


@pytest.mark.parametrize("bias", [False, True])
def test_hcnn_whitened_input_matches_the_reference_with_gradients(bias):
    gen = torch.Generator().manual_seed(7)
    v, width, s, L, n_classes = 6, 8, 2, 3, 6
    state = {k: t.requires_grad_() for k, t in random_hcnn_state(v, width, s, L, n_classes, bias, gen).items()}
    tokens = torch.randint(0, v, (17, s**L), generator=gen)
    labels = torch.randint(0, n_classes, (17,), generator=gen)
    expected = reference_hcnn(onehot_input(tokens, v, whiten=True), state, "mf")
    model = HierarchicalCNN.from_reference({k: t.detach() for k, t in state.items()}, whiten=True)
    out = model(tokens)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(out, HierarchicalCNN.from_reference(model.to_reference_state_dict())(tokens))
    F.cross_entropy(out, labels).backward()
    F.cross_entropy(expected, labels).backward()
    grads = {"hidden.0.0.filter": model.embed.grad.permute(2, 1, 0), "readout": model.beta.grad}
    for l, w in enumerate(model.weights, start=1):
        grads[f"hidden.{l}.0.filter"] = w.grad.reshape(width, s, width).permute(0, 2, 1)
    for l, b in enumerate(model.biases or []):
        grads[f"hidden.{l}.0.bias"] = b.grad
    assert set(grads) == set(state)
    for key, t in state.items():
        assert t.grad.abs().max() > 0, key
        torch.testing.assert_close(grads[key], t.grad, rtol=1e-10, atol=1e-12, msg=key)
    # The layer-by-layer path whitens the same way as the fused trunk.
    h = tokens
    for l, fused in enumerate(model.layer_outputs(tokens), start=1):
        h = model.layer(l, h)
        torch.testing.assert_close(h, fused)


def test_hcnn_from_reference_accepts_a_module_and_reads_its_norm():
    gen = torch.Generator().manual_seed(3)
    state = random_hcnn_state(4, 6, 2, 2, 3, True, gen)

    class Holder(nn.Module):  # the reference's module structure: hidden.{l} = Sequential(conv, ReLU)
        def __init__(self, divisor):
            super().__init__()
            self.hidden = nn.Sequential()
            for l in range(2):
                conv = nn.Module()
                conv.filter = nn.Parameter(state[f"hidden.{l}.0.filter"].clone())
                conv.bias = nn.Parameter(state[f"hidden.{l}.0.bias"].clone())
                self.hidden.append(nn.Sequential(conv, nn.ReLU()))
            self.readout = nn.Parameter(state["readout"].clone())
            self.norm = divisor

    assert HierarchicalCNN.from_reference(Holder(6)).norm == "mf"
    assert HierarchicalCNN.from_reference(Holder(6**0.5)).norm == "std"
    with pytest.raises(ValueError, match=r"norm='std', but the model divides its readout by 6.0 \(norm='mf'\)"):
        HierarchicalCNN.from_reference(Holder(6), norm="std")
    with pytest.raises(ValueError, match="neither H = 6"):
        HierarchicalCNN.from_reference(Holder(2.0))


def test_hcnn_from_reference_refuses_what_it_cannot_read():
    gen = torch.Generator().manual_seed(4)
    state = random_hcnn_state(4, 6, 2, 3, 3, True, gen)
    with pytest.raises(ValueError, match=r"s=3, but hidden.0.0.filter has shape \[6, 4, 2\]"):
        HierarchicalCNN.from_reference(state, s=3)
    with pytest.raises(ValueError, match=r"hidden.2.0.filter must be a floating-point tensor of shape \[6, 6, 2\]"):
        HierarchicalCNN.from_reference({**state, "hidden.2.0.filter": torch.zeros(6, 5, 2)})
    assert_reference_keys_checked(HierarchicalCNN.from_reference, state, "hCNN")


def test_hcnn_from_reference_keeps_the_global_rng_and_old_keys_still_load():
    gen = torch.Generator().manual_seed(5)
    state = random_hcnn_state(4, 6, 2, 2, 3, True, gen, dtype=torch.float32)
    before = torch.get_rng_state()
    model = HierarchicalCNN.from_reference(state)
    assert torch.equal(torch.get_rng_state(), before) and model.seed is None
    old = {"hier.0.weight": state["hidden.0.0.filter"], "hier.0.bias": state["hidden.0.0.bias"],
           "hier.1.weight": state["hidden.1.0.filter"], "hier.1.bias": state["hidden.1.0.bias"],
           "beta": state["readout"]}
    legacy = HierarchicalCNN.from_reference_state_dict(old, s=2, norm="mf")
    assert_same_state(legacy.state_dict(), model.state_dict())


# ---- the fully-connected net -----------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [0, 1, 2, 3])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("whiten", [False, True])
def test_fcn_from_reference_state_matches_its_forward(depth, bias, whiten):
    gen = torch.Generator().manual_seed(10 * depth + 2 * bias + whiten)
    v, d, width, n_classes = 5, 8, 12, 4
    state = random_fcn_state(d * v, width, depth, n_classes, bias and depth > 0, gen)
    tokens = torch.randint(0, v, (11, d), generator=gen)
    expected = reference_fcn(onehot_input(tokens, v, whiten), state, d)
    model = FullyConnected.from_reference(state, v=v, whiten=whiten)
    assert (model.v, model.d, model.depth, model.n_classes, model.norm) == (v, d, depth, n_classes, "mf")
    assert model.width == (width if depth else None)
    assert model.lr_scale == (width if depth else 1.0)  # init.py: lr *= width for the MLP, not the perceptron
    torch.testing.assert_close(model(tokens), expected, rtol=0, atol=1e-12)
    model32 = FullyConnected.from_reference({k: t.float() for k, t in state.items()}, d=d, whiten=whiten)
    torch.testing.assert_close(model32(tokens).double(), expected, rtol=0, atol=2e-5)
    assert_same_state(model.to_reference_state_dict(), state)
    back = FullyConnected.from_reference(model.to_reference_state_dict(), v=v, d=d, whiten=whiten)
    assert_same_state(back.state_dict(), model.state_dict())


def test_fcn_std_norm_and_defaults():
    gen = torch.Generator().manual_seed(8)
    state = random_fcn_state(24, 10, 2, 3, False, gen)
    tokens = torch.randint(0, 4, (5, 6), generator=gen)
    model = FullyConnected.from_reference(state, v=4, norm="std")
    expected = reference_fcn(onehot_input(tokens, 4), state, 6) * 10 / 10**0.5  # readout / sqrt(H), not / H
    torch.testing.assert_close(model(tokens), expected, rtol=0, atol=1e-12)
    assert model.lr_scale == 1.0
    # The default is the nn.Linear baseline, unchanged: bias, readout bias, depth >= 1, no reference layout.
    base = FullyConnected(4, 6, 10, 2, 3, seed=0)
    assert base.norm is None and base.bias and base.out.bias is not None and base.lr_scale == 1.0
    with pytest.raises(ValueError, match=r"norm=None has nn.Linear layers"):
        base.to_reference_state_dict()
    with pytest.raises(ValueError, match=r"depth must be an int >= 1, got 0 \(depth 0, the reference's perceptron"):
        FullyConnected(4, 6, 10, 0, 3)
    with pytest.raises(ValueError, match="norm must be None"):
        FullyConnected(4, 6, 10, 1, 3, norm="ntk")
    with pytest.raises(ValueError, match="needs v or d"):
        FullyConnected.from_reference(state)
    with pytest.raises(ValueError, match=r"input size is 24, not d\*v = 5\*5"):
        FullyConnected.from_reference(state, v=5, d=5)


def test_fcn_reference_initialisation_and_perceptron():
    model = FullyConnected(4, 6, 10, 2, 3, seed=9, norm="mf", bias=True)
    gen = torch.Generator().manual_seed(9)  # the reference's order: layer by layer weight, bias; readout last
    draws = [torch.randn(10, 24, generator=gen), torch.randn(10, generator=gen), torch.randn(10, 10, generator=gen),
             torch.randn(10, generator=gen), torch.randn(10, 3, generator=gen)]
    state = model.to_reference_state_dict()
    assert list(state) == ["readout", "hidden.0.0.weight", "hidden.0.0.bias", "hidden.1.0.weight", "hidden.1.0.bias"]
    assert all(torch.equal(state[k], t) for k, t in zip(list(state)[1:] + ["readout"], draws))
    perceptron = FullyConnected(4, 6, None, 0, 3, norm="std")
    assert list(perceptron.to_reference_state_dict()) == ["readout"] and perceptron.readout_norm == 6**0.5


# ---- against the library's outputs recorded in tests/data (its commit ca0c5aa) ----------------------------

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "reference_2024.pt")


@pytest.fixture(scope="module")
def vectors():
    return torch.load(VECTORS)


def test_hcnn_against_the_library_recorded_outputs(vectors):
    assert len(vectors["hcnn"]) == 3
    for case in vectors["hcnn"]:
        s, L, bias, norm = case["case"]
        model = HierarchicalCNN.from_reference(case["state"], s=s, norm=norm)
        with torch.no_grad():
            torch.testing.assert_close(model(case["tokens"]), case["logits"], rtol=0, atol=1e-12)
        assert_same_state(model.to_reference_state_dict(), case["state"])


def test_fcn_against_the_library_recorded_outputs_and_initialisation(vectors):
    v, d, width = 4, 9, 16
    assert len(vectors["fcn"]) == 3
    for case in vectors["fcn"]:
        depth, bias = case["case"]
        model = FullyConnected.from_reference(case["state"], v=v, norm="mf" if depth else "std")
        with torch.no_grad():
            torch.testing.assert_close(model(case["tokens"]), case["logits"], rtol=1e-6, atol=1e-6)
        # the library drew these weights right after torch.manual_seed(12)
        seeded = FullyConnected(v, d, width if depth else None, depth, 3, seed=12, norm="mf", bias=bias)
        assert_same_state(seeded.to_reference_state_dict(), case["state"])


# ---- against the library's own classes, where its source is at hand --------------------------------------

@pytest.mark.parametrize("s,L,bias,norm", [(2, 3, False, "mf"), (3, 2, True, "std"), (2, 1, True, "mf")])
def test_hcnn_against_the_library_class(s, L, bias, norm):
    cnn = reference_source("cnn")
    torch.manual_seed(11)
    ref = cnn.hCNN(s**L, s, 6, 10, 5, L, bias=bias, norm=norm).double()
    tokens = torch.randint(0, 6, (9, s**L))
    model = HierarchicalCNN.from_reference(ref)
    assert model.norm == norm
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), ref(onehot_input(tokens, 6)), rtol=0, atol=1e-12)
    assert_same_state(model.to_reference_state_dict(), ref.state_dict())  # keys, order, shapes, values
    ref.load_state_dict(model.to_reference_state_dict())  # strict


@pytest.mark.parametrize("depth,bias", [(0, False), (1, True), (3, False)])
def test_fcn_against_the_library_classes(depth, bias):
    fcn = reference_source("fcn")
    v, d, width = 4, 9, 16
    torch.manual_seed(12)  # init.py: torch.manual_seed(seed_model), then the model
    if depth == 0:
        ref = fcn.Perceptron(d * v, 3, norm=d**0.5)
    else:
        ref = fcn.MLP(d * v, width, 3, depth, bias=bias, norm="mf")
    tokens = torch.randint(0, v, (7, d))
    x = onehot_input(tokens, v).float().transpose(1, 2).flatten(start_dim=1)
    model = FullyConnected.from_reference(ref, v=v)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), ref(x), rtol=1e-6, atol=1e-6)
    ref.load_state_dict(model.to_reference_state_dict())
    # The same seed draws the same initial weights.
    seeded = FullyConnected(v, d, width if depth else None, depth, 3, seed=12, norm="mf", bias=bias)
    assert_same_state(seeded.to_reference_state_dict(), ref.state_dict())


# ---- rhmfast.nn.convert ----------------------------------------------------------------------------------

def test_convert_warns_when_it_swaps_nothing():
    model = nn.Sequential(nn.Linear(3, 3))
    with pytest.warns(UserWarning, match=r"nothing converted, Sequential is returned unchanged: it has no nn.Conv1d "
                                         r"with kernel_size == stride"):
        converted = convert(model)
    assert converted is model
    with pytest.warns(UserWarning, match=r"1 nn.Conv1d layer\(s\) are not patchwise \(e.g. kernel_size=3, stride=1"):
        convert(nn.Sequential(nn.Conv1d(3, 3, 3)))
    model = nn.Sequential(nn.Conv1d(3, 4, 2, stride=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert(model)  # swaps one: silent
    with pytest.warns(UserWarning, match=r"already has 1 PatchConv1d layer\(s\)"):
        convert(model)

    class MyConv1d(nn.Module):  # the reference's layer: a 'filter' parameter, F.conv1d in forward
        def __init__(self):
            super().__init__()
            self.filter = nn.Parameter(torch.randn(4, 3, 2))

    with pytest.warns(UserWarning, match=r"reference library's hCNN.*HierarchicalCNN.from_reference\(model\)"):
        convert(nn.Sequential(nn.Sequential(MyConv1d(), nn.ReLU())))

    class MyLinear(nn.Linear):
        pass

    with pytest.warns(UserWarning, match=r"reference library's fcn: use .*FullyConnected.from_reference"):
        convert(nn.Sequential(MyLinear(3, 3)))


def test_convert_on_the_library_hcnn_says_what_to_use():
    cnn = reference_source("cnn")
    ref = cnn.hCNN(8, 2, 4, 6, 3, 3)
    with pytest.warns(UserWarning, match=r"hCNN is returned unchanged.*HierarchicalCNN.from_reference"):
        converted = convert(ref)
    assert converted is ref
    assert HierarchicalCNN.from_reference(ref).norm == "std"  # hCNN's own default


def test_reference_state_from_rhmfast_sampled_data():
    # The whole path on rhmfast's own samples: token ids in, the reference's one-hot on the other side.
    g = rhmfast.RHM(8, 2, 2, 3, seed=0)
    x, _ = g.sample(32, seed=1)
    model = HierarchicalCNN(8, 16, 2, 3, 8, norm="mf", bias=True, seed=2).double()
    state = model.to_reference_state_dict()
    torch.testing.assert_close(model(x), reference_hcnn(rhmfast.one_hot(x, 8).double(), state, "mf"),
                               rtol=0, atol=1e-12)
    whitened = HierarchicalCNN.from_reference(state, whiten=True)
    onehot = rhmfast.one_hot(x, 8, dtype=torch.float64, whiten=True)
    torch.testing.assert_close(whitened(x), reference_hcnn(onehot, state, "mf"), rtol=0, atol=1e-12)
    assert math.isclose(whitened.lr_scale, 16.0)
