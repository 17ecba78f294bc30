"""Shared helpers of the model tests (test_models.py, test_reference_models.py, test_locally_connected.py):
the 2024 reference library's input and source, state-dict comparison, torch.compile against eager."""
from __future__ import annotations

import os
import subprocess
import types

import pytest
import torch
import torch.nn.functional as F

REFERENCE_REPO = os.environ.get("RHMFAST_REFERENCE_REPO", "/work/.mirror/pcsl-epfl+random-hierarchy-model/repo")


def onehot_input(tokens, v, whiten=False):
    """datasets/random_hierarchy_model.py: F.one_hot(...).float(), whitened (x - 1/v) / sqrt(1 - 1/v) with
    --whitening 1, then permuted to [B, v, T] (here in float64)."""
    x = F.one_hot(tokens.long(), v).double()
    if whiten:
        x = (x - 1.0 / v) * (1.0 - 1.0 / v) ** -0.5
    return x.permute(0, 2, 1)


def reference_source(name):
    """The reference library's models/<name>.py as a module, read from its git checkout (the test is skipped
    where there is none)."""
    try:
        text = subprocess.run(["git", "-C", REFERENCE_REPO, "show", f"HEAD:models/{name}.py"], capture_output=True,
                              text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip(f"the reference library's models/{name}.py is not at hand ({REFERENCE_REPO})")
    module = types.ModuleType(f"reference_{name}")
    exec(compile(text, f"random-hierarchy-model/models/{name}.py", "exec"), module.__dict__)
    return module


def assert_same_state(a, b):
    """Two state dicts with the same keys in the same order and equal tensors (shapes and dtypes included)."""
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def assert_reference_keys_checked(from_reference, state, network):
    """from_reference refuses what is not a reference network's state (a hCNN's or hLCN's, L >= 3 layers with
    biases): a filter or a bias missing, an extra key, other keys altogether, not a state dict."""
    with pytest.raises(ValueError, match=r"missing \['hidden.1.0.filter'\]"):
        from_reference({k: t for k, t in state.items() if k != "hidden.1.0.filter"})
    with pytest.raises(ValueError, match=r"missing \['hidden.2.0.bias'\]"):
        from_reference({k: t for k, t in state.items() if k != "hidden.2.0.bias"})
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        from_reference({**state, "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=f"needs the reference {network}'s keys"):
        from_reference({"hier.0.weight": state["hidden.0.0.filter"], "beta": state["readout"]})
    with pytest.raises(TypeError, match="nn.Module or its state dict"):
        from_reference([state])


def assert_compiled_matches_eager(model, x):
    """torch.compile(fullgraph=True) of the model gives its eager outputs and parameter gradients. Returns the
    compiled model."""
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out, expected = compiled(x), model(x)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    expected_grads = torch.autograd.grad(expected.square().sum(), list(model.parameters()))
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b)
    return compiled
