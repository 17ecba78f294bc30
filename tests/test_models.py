"""Learners: the hCNN against the 2024 library's formulation (one-hot input, F.conv1d layers), state-dict
conversion, the fully-connected baseline, the Ren learner's parts, bad configurations, torch.compile."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import rhmfast
from model_checks import assert_compiled_matches_eager
from rhmfast.models import FullyConnected, HierarchicalCNN, RenLayerwiseLearner


def library_hcnn(onehot, state, s, norm):
    """The 2024 reference library's hCNN as that library builds it, on one-hot input [B, v, s^L]: Conv1d layers with
    kernel = stride = s, each divided by sqrt(C_in*s), ReLU, mean over positions, readout / sqrt(H) or H."""
    h = onehot
    L = sum(1 for k in state if k.endswith(".filter"))
    for l in range(L):
        w = state[f"hidden.{l}.0.filter"]
        h = torch.relu(F.conv1d(h, w, state.get(f"hidden.{l}.0.bias"), stride=s) / math.sqrt(w.shape[1] * s))
    width = state["readout"].shape[0]
    return h.mean(-1) @ state["readout"] / (math.sqrt(width) if norm == "std" else width)


def grads_in_reference_layout(model):
    holder = copy.deepcopy(model)
    with torch.no_grad():
        for p, q in zip(holder.parameters(), model.parameters()):
            p.copy_(q.grad)
    return holder.to_reference_state_dict()


@pytest.mark.parametrize("s,L,bias,norm", [(2, 1, False, "std"), (2, 3, False, "std"), (2, 3, True, "mf"),
                                           (3, 2, True, "std"), (4, 2, False, "mf")])
def test_hcnn_equals_library_formulation(s, L, bias, norm):
    g = rhmfast.RHM(6, 2, s, L, seed=3)
    x, y = g.sample(33, seed=4)
    model = HierarchicalCNN(6, 10, s, L, 6, norm=norm, bias=bias, seed=5).double()
    state = {k: t.clone().requires_grad_() for k, t in model.to_reference_state_dict().items()}
    onehot = rhmfast.one_hot(x, 6).double()
    expected = library_hcnn(onehot, state, s, norm)
    out = model(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    F.cross_entropy(out, y).backward()
    F.cross_entropy(expected, y).backward()
    grads = grads_in_reference_layout(model)
    assert set(grads) == set(state)
    for key in state:
        assert state[key].grad.abs().max() > 0, key  # the check compares real gradients
        torch.testing.assert_close(grads[key], state[key].grad, rtol=1e-10, atol=1e-12, msg=key)


def test_hcnn_initialisation_follows_the_reference_law():
    model = HierarchicalCNN(32, 256, 2, 3, 8, seed=0)
    for p in model.parameters():  # N(0, 1) entries; the 1/sqrt(fan_in) is in the forward pass
        assert abs(p.mean().item()) < 0.05 and abs(p.std().item() - 1) < 0.05
    assert model.scales == [1 / math.sqrt(64), 1 / math.sqrt(512), 1 / math.sqrt(512)]
    assert HierarchicalCNN(32, 256, 2, 3, 8, norm="mf").lr_scale == 256.0


def test_reference_state_dict_round_trip():
    model = HierarchicalCNN(5, 7, 3, 3, 4, bias=True, seed=1)
    state = model.to_reference_state_dict()
    assert state["hidden.0.0.filter"].shape == (7, 5, 3) and state["hidden.2.0.filter"].shape == (7, 7, 3)
    assert state["readout"].shape == (7, 4) and state["hidden.1.0.bias"].shape == (7,)
    back = HierarchicalCNN.from_reference(state, s=3, norm="std")
    for a, b in zip(model.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)
    x, _ = rhmfast.RHM(5, 2, 3, 3, n_classes=4).sample(9, seed=0)
    assert torch.equal(model(x), back(x))
    with pytest.raises(ValueError, match="hidden.0.0.filter"):
        HierarchicalCNN.from_reference(state, s=2)


def test_layer_by_layer_equals_fused_trunk():
    g = rhmfast.RHM(8, 3, 2, 3, seed=0)
    x, _ = g.sample(17, seed=1)
    model = HierarchicalCNN(8, 12, 2, 3, 8, bias=True, seed=2)
    h = x
    for l, fused in enumerate(model.layer_outputs(x), start=1):
        h = model.layer(l, h)
        torch.testing.assert_close(h, fused)


def test_fully_connected_is_an_mlp_on_one_hot():
    g = rhmfast.RHM(6, 2, 2, 3, seed=0)
    x, _ = g.sample(11, seed=1)
    model = FullyConnected(6, 8, 20, 2, 6, seed=3)
    h = F.one_hot(x.long(), 6).flatten(1).float()
    for layer in model.hidden:
        h = torch.relu(h @ layer.weight.t() + layer.bias)
    torch.testing.assert_close(model(x), h @ model.out.weight.t() + model.out.bias)
    assert torch.equal(FullyConnected(6, 8, 20, 2, 6, seed=3)(x), model(x))  # seeded initialisation
    with pytest.raises(ValueError, match="d=8"):
        model(x[:, :4])


def test_ren_tensor_features_are_exact_at_the_input_level():
    learner = RenLayerwiseLearner(5, 2, 2, features="tensor")
    tokens = torch.tensor([[0, 3, 4, 1], [2, 2, 0, 0]])
    features = learner.patch_features(2, learner.embed_tokens(tokens))
    expected = F.one_hot(tokens.reshape(2, 2, 2)[..., 0] * 5 + tokens.reshape(2, 2, 2)[..., 1], 25).double()
    assert torch.equal(features, expected)


def test_ren_rff_features_and_guarded_normaliser():
    learner = RenLayerwiseLearner(4, 2, 2, features="rff", n_features=64, sigma=[0.5, 1.0], seed=0)
    h = learner.embed_tokens(torch.randint(0, 4, (3, 4)))
    phi = learner.patch_features(2, h)
    assert phi.shape == (3, 2, 128)
    torch.testing.assert_close(phi.norm(dim=-1), torch.ones(3, 2, dtype=torch.float64))  # M^-1/2 (cos, sin)
    # omega ~ N(0, I), divided by the level's bandwidth where used: level 1 uses sigma 0.5, level 2 sigma 1.
    assert learner.sigma(1) == 0.5 and learner.sigma(2) == 1.0
    assert 0.75 < learner.omega_1.std().item() < 1.25 and 0.75 < learner.omega_2.std().item() < 1.25
    mixed = RenLayerwiseLearner(4, 2, 2, features="tensor+rff", n_features=8, seed=0)
    assert mixed.level_features == {1: "rff", 2: "tensor"}  # exact at the input level
    assert mixed.W[1].shape == (4, 16) and mixed.W[0].shape == (4, 16) and not hasattr(mixed, "omega_2")
    z = torch.tensor([[0.0, 0.0], [1e-9, 0.0], [-1e-9, 0.0], [1.0, 3.0]], dtype=torch.float64)
    out = learner.normalise(z)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1:], torch.tensor([[1e-3, 0.0], [1e-3, 0.0], [0.25, 0.75]], dtype=torch.float64))


@pytest.mark.parametrize("build,match", [
    (lambda: HierarchicalCNN(8, 0, 2, 3, 8), "width"),
    (lambda: HierarchicalCNN(8, 16, 2, 3, 8, norm="ntk"), "norm"),
    (lambda: HierarchicalCNN(8, 16, 2, 3, 8, activation="tanh"), "activation"),
    (lambda: HierarchicalCNN(8, 16, 2, 0, 8), "L"),
    (lambda: FullyConnected(8, 8, 16, 0, 8), "depth"),
    (lambda: RenLayerwiseLearner(8, 2, 3, features="wavelet"), "features"),
    (lambda: RenLayerwiseLearner(8, 2, 3, features="rff", sigma=[1.0, 1.0]), "sigma"),
    (lambda: RenLayerwiseLearner(8, 2, 3, eps=0.0), "eps"),
])
def test_bad_configurations_name_the_parameter(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_compiled_hcnn_gives_the_eager_result():
    g = rhmfast.RHM(8, 2, 2, 3, seed=0)
    x, _ = g.sample(16, seed=1)
    assert_compiled_matches_eager(HierarchicalCNN(8, 16, 2, 3, 8, seed=0), x)
