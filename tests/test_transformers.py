"""The transformers (AttentionOnly: the 2024 library's MLA; Encoder: the NeurIPS 2024 code's BERTuccia) against
a transcription of the references' formulation written out here (one-hot float input, explicit
softmax(q k^T / sqrt(head_dim)) v, the references' scalings and order of draws): the same logits and gradients,
the same initial weights for a seed; the read-out at the last position, mask tokens, torch.compile, clear
errors; train_sgd with AdamW lowers the training loss; the references' recipe."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rhmfast
from rhmfast.models import AttentionOnly, Encoder
from rhmfast.train import train_sgd
from rhmfast.train.loop import OPTIMIZERS, make_optimizer, reference_checkpoints

V, D, E, HEADS, LAYERS = 8, 8, 16, 4, 3  # RHM v = 8, s = 2, L = 3
MODELS = {"attention_only": AttentionOnly, "encoder": Encoder}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


# ---- the references' formulation, written out ----------------------------------------------------------------

class RefAttention(nn.Module):
    """models/transformer.py MultiHeadAttention (head_dim = E / heads, out_dim = E)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.key = nn.Parameter(torch.randn(dim, dim))
        self.query = nn.Parameter(torch.randn(dim, dim))
        self.value = nn.Parameter(torch.randn(dim, dim))
        self.projection = nn.Parameter(torch.randn(dim, dim))

    def forward(self, x):
        B, T, C = x.shape
        dh = C // self.heads

        def heads_of(w):  # [B, heads, T, dh], divided by sqrt(C)
            return (x @ w.T).view(B, T, self.heads, dh).transpose(1, 2) / math.sqrt(C)

        q, k, v = heads_of(self.query), heads_of(self.key), heads_of(self.value)
        weight = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dh), dim=-1)
        out = (weight @ v).transpose(1, 2).reshape(B, T, C)
        return out @ self.projection.T / math.sqrt(self.projection.shape[1])


class RefAttentionBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.sa = RefAttention(dim, heads)

    def forward(self, x):
        return self.sa(x)


class RefLinear(nn.Module):
    """models/fcn.py MyLinear without bias: x W^T / sqrt(fan_in)."""

    def __init__(self, fan_in, fan_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in))

    def forward(self, x):
        return x @ self.weight.T / math.sqrt(x.shape[-1])


class RefMLP(nn.Module):
    """models/fcn.py MLP with one hidden layer, no bias, norm "std"."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.hidden = nn.Sequential(nn.Sequential(RefLinear(dim, hidden), nn.ReLU()))
        self.readout = nn.Parameter(torch.randn(hidden, dim))

    def forward(self, x):
        return self.hidden(x) @ self.readout / math.sqrt(self.readout.shape[0])


class RefEncoderBlock(nn.Module):
    def __init__(self, dim, heads, ffwd_size=4):
        super().__init__()
        self.sa = RefAttention(dim, heads)
        self.ffwd = RefMLP(dim, ffwd_size * dim)
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)

    def forward(self, x):
        x = x + self.sa(self.ln1(x))
        return x + self.ffwd(self.ln2(x))


class RefTransformer(nn.Module):
    """MLA (final_norm False) and BERTuccia (True) on one-hot float input [B, T, v]; n_out read-out rows (the
    references' vocab_size)."""

    def __init__(self, v, block_size, dim, heads, layers, n_out, encoder):
        super().__init__()
        self.token_embedding = nn.Parameter(torch.randn(dim, v))
        self.position_embedding = nn.Embedding(block_size, dim)
        block = RefEncoderBlock if encoder else RefAttentionBlock
        self.blocks = nn.Sequential(*[block(dim, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(dim) if encoder else nn.Identity()
        self.readout = nn.Parameter(torch.randn(n_out, dim))

    def forward(self, onehot):
        _, T, C = onehot.shape
        x = onehot @ self.token_embedding.T / math.sqrt(C) + self.position_embedding(torch.arange(T))
        x = self.ln_f(self.blocks(x))
        return x[:, -1, :] @ self.readout.T / math.sqrt(self.readout.shape[-1])


def build(kind, v=V, n_classes=V, seed=0, layers=LAYERS, **kw):
    return MODELS[kind](v, D, n_classes, E, HEADS, layers, seed=seed, **kw)


def reference_twin(model):
    """The reference transcription holding a copy of model's weights (through its state-dict keys)."""
    ref = RefTransformer(model.v, model.d, model.embedding_dim, model.heads, model.layers, model.n_classes,
                         encoder=isinstance(model, Encoder)).to(model.readout.dtype)
    ref.load_state_dict({model.reference_key(k): t for k, t in model.state_dict().items()})
    return ref


def tokens_and_labels(n=32, v=V, seed=0):
    x, y = rhmfast.RHM(8, 2, 2, 3, seed=1).sample(n, seed=seed)
    return x, y % v


# ---- agreement with the references -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("n, layers", [(32, LAYERS), (5, LAYERS), (32, 1), (5, 1)],
                         ids=["table", "per-sample", "table-one-layer", "per-sample-one-layer"])
def test_logits_and_gradients_match_the_reference_formulation(kind, n, layers):
    """n > v: the first block's products come from the table of the v * d possible inputs; n <= v: from each
    sample's inputs. One layer: the first block is the last one (the folded single query)."""
    model = build(kind, seed=3, layers=layers).double()
    with torch.no_grad():  # LayerNorm's affine parameters away from (1, 0), so that they are compared too
        for name, p in model.named_parameters():
            if "ln" in name:
                p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype))
    ref = reference_twin(model)
    x, y = tokens_and_labels(n)
    ours, theirs = model(x), ref(F.one_hot(x.long(), V).double())
    torch.testing.assert_close(ours, theirs, rtol=1e-11, atol=1e-11)
    F.cross_entropy(ours, y).backward()
    F.cross_entropy(theirs, y).backward()
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[model.reference_key(name)].grad, rtol=1e-9, atol=1e-11,
                                   msg=name)


@pytest.mark.parametrize("kind", MODELS)
def test_float32_logits_match_the_reference_formulation(kind):
    model = build(kind, seed=4)
    x, _ = tokens_and_labels()
    torch.testing.assert_close(model(x), reference_twin(model)(F.one_hot(x.long(), V).float()), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("kind", MODELS)
def test_a_seed_gives_the_references_weights_after_manual_seed(kind):
    """init.py calls torch.manual_seed(seed_model) and builds the model: seed=k draws the same numbers."""
    model = build(kind, seed=11)
    torch.manual_seed(11)
    ref = RefTransformer(V, D, E, HEADS, LAYERS, V, encoder=kind == "encoder")
    theirs = ref.state_dict()
    mine = model.state_dict()
    assert {model.reference_key(k) for k in mine} == set(theirs)
    for key, tensor in mine.items():
        assert torch.equal(tensor, theirs[model.reference_key(key)]), key


@pytest.mark.parametrize("kind", MODELS)
def test_load_reference_state_dict(kind):
    torch.manual_seed(5)
    ref = RefTransformer(V, D, E, HEADS, LAYERS, V, encoder=kind == "encoder")
    model = build(kind, seed=0)
    model.load_reference_state_dict(ref)
    x, _ = tokens_and_labels()
    torch.testing.assert_close(model(x), ref(F.one_hot(x.long(), V).float()), rtol=1e-4, atol=1e-4)
    other = build(kind, seed=1)
    other.load_reference_state_dict(ref.state_dict())
    assert torch.equal(other(x), model(x))
    state = dict(ref.state_dict())
    state.pop("readout")
    with pytest.raises(ValueError, match=r"rhmfast: .*load_reference_state_dict.*missing \['readout'\]"):
        model.load_reference_state_dict(state)
    wide = build(kind, n_classes=V + 1, seed=2)
    before = {k: t.clone() for k, t in wide.state_dict().items()}
    with pytest.raises(ValueError, match=r"readout must be a floating-point tensor of shape \[9, 16\]"):
        wide.load_reference_state_dict(ref)
    assert all(torch.equal(before[k], t) for k, t in wide.state_dict().items())  # nothing copied


# ---- shapes, read-out, seeds, gradients -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_shapes_for_every_token_dtype(kind, dtype):
    model = build(kind, n_classes=5)
    x, _ = tokens_and_labels(7)
    out = model(x.to(dtype))
    assert out.shape == (7, 5) and out.dtype == torch.float32
    assert torch.equal(out, model(x.long()))


@pytest.mark.parametrize("kind", MODELS)
def test_read_out_is_the_last_positions_full_sequence_output(kind):
    """The last block computes the last position alone: the same as running it on every position and
    reading position d - 1 (and not position 0)."""
    model = build(kind).double()
    x, _ = tokens_and_labels()
    h = model.embed(x)
    for block in model.blocks:
        h = block(h)  # every position
    assert h.shape == (32, D, E)
    torch.testing.assert_close(model(x), model.read(h[:, -1]), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(model(x), model.read(h[:, 0]))


@pytest.mark.parametrize("kind", MODELS)
def test_seed_makes_the_initialisation_reproducible_without_touching_the_global_generator(kind):
    state = torch.get_rng_state()
    a, b, c = build(kind, seed=7), build(kind, seed=7), build(kind, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q), name
        if "ln" not in name:  # LayerNorms start at (1, 0) whatever the seed
            assert not torch.equal(p, r), name
    assert a.seed == 7 and a.lr_scale == 1.0
    torch.manual_seed(0)
    d = build(kind, seed=None)
    torch.manual_seed(0)
    assert torch.equal(build(kind, seed=None).readout, d.readout)  # seed None: torch's global generator


@pytest.mark.parametrize("kind", MODELS)
def test_gradients_reach_every_parameter(kind):
    model = build(kind)
    x, y = tokens_and_labels()
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", MODELS)
def test_mask_token_is_a_vocabulary_entry(kind):
    """A task that hides the last token with the id v - 1 builds the model with v = 8 + 1: the mask has its
    own embedding column, which learns; the formulation is the reference's on a one-hot of size 9."""
    model = build(kind, v=V + 1, seed=2).double()
    x, y = tokens_and_labels()
    x[:, -1] = V
    out = model(x)
    torch.testing.assert_close(out, reference_twin(model)(F.one_hot(x.long(), V + 1).double()), rtol=1e-11,
                               atol=1e-11)
    F.cross_entropy(out, y).backward()
    assert model.token_embedding.grad[:, V].abs().sum() > 0
    with pytest.raises(ValueError, match=r"token ids in \[0, v=8\), got 8"):
        build(kind)(x)


# ---- torch.compile ---------------------------------------------------------------------------------------------

def _compiled_matches_eager(kind, backend):
    torch._dynamo.reset()
    model = build(kind)
    x, y = tokens_and_labels(16)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    eager_loss = F.cross_entropy(model(x), y)
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
    loss = F.cross_entropy(compiled(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    for (name, _), g, e in zip(model.named_parameters(), grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("kind", MODELS)
def test_torch_compile_fullgraph_forward_and_backward(kind):
    _compiled_matches_eager(kind, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("kind", MODELS)
def test_torch_compile_fullgraph_inductor(kind):
    _compiled_matches_eager(kind, "inductor")


# ---- bad configurations and inputs -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", MODELS)
def test_bad_configurations_raise_naming_the_parameter(kind):
    cls = MODELS[kind]
    with pytest.raises(ValueError, match=r"rhmfast: heads must divide embedding_dim=16 .*got heads=3"):
        cls(V, D, V, 16, 3, 2)
    for position, name in enumerate(["v", "d", "n_classes", "embedding_dim", "heads", "layers"]):
        args = [V, D, V, E, HEADS, LAYERS]
        args[position] = 0
        with pytest.raises(ValueError, match=rf"rhmfast: {name} must be an int >= 1, got 0"):
            cls(*args)
    with pytest.raises(ValueError, match=r"rhmfast: embedding_dim must be an int >= 1, got 16.0"):
        cls(V, D, V, 16.0, HEADS, LAYERS)
    with pytest.raises(ValueError, match=r"rhmfast: seed must be in \[0, 18446744073709551615\], got -1"):
        cls(V, D, V, E, HEADS, LAYERS, seed=-1)
    if kind == "encoder":
        with pytest.raises(ValueError, match=r"rhmfast: ffwd_size must be an int >= 1, got 0"):
            cls(V, D, V, E, HEADS, LAYERS, ffwd_size=0)


@pytest.mark.parametrize("kind", MODELS)
def test_bad_inputs_raise(kind):
    model = build(kind)
    name = type(model).__name__
    x, _ = tokens_and_labels(4)
    with pytest.raises(ValueError, match=rf"rhmfast: {name} expects token ids of shape \[B, d=8\], got \[4, 4\]"):
        model(x[:, :4])
    with pytest.raises(TypeError, match=rf"rhmfast: {name} expects integer token ids .* got dtype torch.float32"):
        model(x.float())
    with pytest.raises(ValueError, match=r"token ids in \[0, v=8\), got -1"):
        model(torch.full((2, D), -1))
    with pytest.raises(TypeError, match=rf"rhmfast: {name} expects token ids as an integer tensor"):
        model(x.tolist())


# ---- training: AdamW and the references' recipe ---------------------------------------------------------------

def test_make_optimizer_adamw():
    assert "adamw" in OPTIMIZERS
    params = [torch.zeros(3, requires_grad=True)]
    opt = make_optimizer(params, "adamw", lr=0.01, momentum=0.9, weight_decay=0.1)
    assert type(opt) is torch.optim.AdamW
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (0.01, 0.1, (0.9, 0.999), 1e-8)
    # Decoupled decay: with a zero gradient the first step only shrinks the weights by lr * weight_decay.
    with torch.no_grad():
        params[0].fill_(2.0)
    params[0].grad = torch.zeros(3)
    opt.step()
    torch.testing.assert_close(params[0].detach(), torch.full((3,), 2.0 * (1 - 0.01 * 0.1)))
    with pytest.raises(ValueError, match=r"rhmfast: optimizer must be one of \('sgd', 'adam', 'adamw'\)"):
        make_optimizer(params, "lamb", lr=0.01, momentum=0.9, weight_decay=0.0)


@pytest.mark.parametrize("kind", MODELS)
def test_train_sgd_with_adamw_lowers_the_training_loss(kind):
    g = rhmfast.RHM(8, 2, 2, 2)  # d = 4, P_max = 8 * 2^3 = 64
    model = MODELS[kind](g.v, g.input_dim, g.n_classes, 32, 4, 2, seed=0)
    record = train_sgd(model, g, 48, n_test=16, optimizer="adamw", lr=1e-2, weight_decay=0.01, batch_size=16,
                       max_epochs=40, eval_every=1, progress=False)
    losses = [point["train_loss"] for point in record.curve]
    assert record.config["optimizer"] == "adamw" and record.config["weight_decay"] == 0.01
    assert losses[-1] < 0.1 * losses[0], losses  # from about log 8 = 2.08


def test_reference_recipe_is_the_references_main_py_defaults():
    for cls in MODELS.values():
        assert cls.reference_recipe() == dict(
            optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.0, scheduler=None, max_epochs=100,
            loss_threshold=1e-3, eval_every=reference_checkpoints(10, 100, fill=True), stop_check="eval",
            eval_at_start=True, order="pcsl")
    assert AttentionOnly.reference_recipe()["eval_every"][:9] == [1, 2, 3, 5, 6, 7, 10, 20, 30]
    g = rhmfast.RHM(8, 2, 2, 2)
    recipe = dict(AttentionOnly.reference_recipe(), max_epochs=2)
    record = train_sgd(AttentionOnly(8, 4, 8, 16, 2, 2, seed=0), g, 32, n_test=16, batch_size=16, progress=False,
                       **recipe)
    assert [p["epoch"] for p in record.curve] == [0, 1, 2]
