"""The replica form of the hCNN trunk ops (a leading K on every data and parameter tensor: K independent
small models in one call): on the CPU, replica k equals the solo op on replica k's slices bit for bit
(outputs and every gradient), agrees with the reference, passes gradcheck, opcheck and torch.compile, and
rejects mixed forms and mismatched K by name."""
import pytest
import torch

from patchconv_samples import TOLERANCE, backend, cuda, need_extension  # noqa: F401  (backend: fixture)
from rhmfast.ops.patch_conv import patch_conv
from rhmfast.ops.patch_conv_stack import patch_conv_stack
from rhmfast.ops.token_patch_embed import token_patch_embed
from rhmfast.reference import patch_conv as ref_conv
from rhmfast.reference import patch_conv_stack as ref_stack
from rhmfast.reference import token_patch_embed as ref_token

DTYPES = (torch.float32, torch.float64)
ACTIVATIONS = ("none", "relu", "square")
K = 3  # replicas: odd on purpose, as are the other sizes (and a replica's size is rarely a multiple of 64 bytes)


@pytest.fixture
def gen(rng):
    """A torch.Generator seeded from the test's reproducible rng (conftest.py prints the session seed)."""
    seed = rng.getrandbits(63)
    print(f"torch generator seed {seed}")
    return torch.Generator().manual_seed(seed)


def randn(shape, dtype, gen, requires_grad=True):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)


def conv_replicas(gen, dtype, *, batch=5, n_patches=3, c_in=7, c_out=9, s=2, bias=True, pos_bias=True):
    x = randn((K, batch, n_patches * s, c_in), dtype, gen)
    w = randn((K, c_out, s * c_in), dtype, gen)
    b = randn((K, c_out), dtype, gen) if bias else None
    pb = randn((K, n_patches, c_out), dtype, gen) if pos_bias else None
    return x, w, b, pb


def token_replicas(gen, dtype, *, batch=5, n_patches=3, vocab=4, c_out=7, s=2, bias=True, pos_bias=True,
                   token_dtype=torch.int64):
    tokens = torch.randint(0, vocab, (K, batch, n_patches * s), generator=gen).to(token_dtype)
    table = randn((K, s, vocab, c_out), dtype, gen)
    b = randn((K, c_out), dtype, gen) if bias else None
    pb = randn((K, n_patches, c_out), dtype, gen) if pos_bias else None
    return tokens, table, b, pb


def trunk_replicas(gen, dtype, *, batch, vocab, layers, s=2, widths=(7, 5, 6, 3), bias=True):
    tokens = torch.randint(0, vocab, (K, batch, s**layers), generator=gen)
    table = randn((K, s, vocab, widths[0]), dtype, gen)
    weights = [randn((K, widths[l + 1], s * widths[l]), dtype, gen) for l in range(layers - 1)]
    biases = [randn((K, widths[l]), dtype, gen) for l in range(layers)] if bias else []
    return tokens, table, weights, biases


def takes_distinct_patch_shortcut(batch, length, vocab, s, layers):
    """The kernel's use_distinct_patches for one replica's [B, T] tokens (patch_conv_stack.cpp)."""
    return layers >= 2 and vocab**s <= 1 << 20 and 2 * s * vocab**s <= batch * (length // s)


def slice_k(t, k):
    return None if t is None else t[k]


def grads_of(outputs, inputs, grad_outputs):
    """Gradients of `inputs` (None entries skipped) for the given output gradients."""
    present = [t for t in inputs if t is not None]
    return torch.autograd.grad(outputs, present, grad_outputs)


def assert_replica_equals_solo(replica_fn, solo_fn, inputs, n_outputs_seed_gen):
    """replica_fn(*inputs) vs solo_fn(k, *inputs) for every k: outputs and gradients torch.equal."""
    outs = replica_fn(*inputs)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    grad_outs = [torch.randn(o.shape, generator=n_outputs_seed_gen, dtype=o.dtype) for o in outs]
    grads = grads_of(outs, inputs, grad_outs)
    params = [t for t in inputs if t is not None and t.requires_grad]
    for k in range(K):
        solo = solo_fn(k, *inputs)
        solo = solo if isinstance(solo, (list, tuple)) else [solo]
        assert len(solo) == len(outs)
        for l, (a, b) in enumerate(zip(outs, solo)):
            assert torch.equal(a[k], b), f"replica {k}: output {l} differs from the solo op's"
        solo_grads = torch.autograd.grad(solo, params, [g[k] for g in grad_outs], allow_unused=True)
        for i, (a, b) in enumerate(zip(grads, solo_grads)):
            assert b is not None
            assert torch.equal(a[k], b[k]), f"replica {k}: gradient of input {i} differs from the solo op's"


# ---- replica form == K solo calls, bit for bit (CPU kernels) ---------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias,pos_bias", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("shape", [dict(), dict(batch=2, n_patches=5, c_in=16, c_out=16, s=3)])
def test_patch_conv_replicas_equal_solo(gen, dtype, activation, bias, pos_bias, shape):
    need_extension()
    inputs = conv_replicas(gen, dtype, bias=bias, pos_bias=pos_bias, **shape)
    s = inputs[1].shape[2] // inputs[0].shape[3]
    op = torch.ops.rhmfast.patch_conv
    assert_replica_equals_solo(
        lambda x, w, b, pb: op(x, w, b, pb, s, 0.7, activation),
        lambda k, x, w, b, pb: op(x[k], w[k], slice_k(b, k), slice_k(pb, k), s, 0.7, activation), inputs, gen)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias,pos_bias", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("shape", [dict(), dict(batch=7, n_patches=2, vocab=5, c_out=11, s=3),
                                   dict(batch=300, n_patches=2, vocab=3, c_out=5, s=4)])  # several backward blocks
def test_token_patch_embed_replicas_equal_solo(gen, dtype, activation, bias, pos_bias, shape):
    need_extension()
    tokens, table, b, pb = token_replicas(gen, dtype, bias=bias, pos_bias=pos_bias, **shape)
    s = table.shape[1]
    op = torch.ops.rhmfast.token_patch_embed
    assert_replica_equals_solo(
        lambda w, b_, pb_: op(tokens, w, b_, pb_, s, 0.7, activation),
        lambda k, w, b_, pb_: op(tokens[k], w[k], slice_k(b_, k), slice_k(pb_, k), s, 0.7, activation),
        (table, b, pb), gen)


@pytest.mark.parametrize("token_dtype", [torch.uint8, torch.int16, torch.int32])
def test_token_patch_embed_replicas_take_every_token_dtype(gen, token_dtype):
    need_extension()
    tokens, table, b, pb = token_replicas(gen, torch.float32, token_dtype=token_dtype)
    y = token_patch_embed(tokens, table, b, pb, patch_size=2, activation="relu")
    for k in range(K):
        assert torch.equal(y[k], token_patch_embed(tokens[k], table[k], b[k], pb[k], patch_size=2, activation="relu"))


# (batch, vocab, layers): the distinct-patch shortcut is taken where 2 s v^s <= B T/s (for one replica).
STACK_CASES = [(5, 4, 1), (5, 5, 2), (13, 3, 2), (5, 5, 3), (40, 3, 3), (3, 4, 4), (50, 3, 4)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch,vocab,layers", STACK_CASES)
def test_patch_conv_stack_replicas_equal_solo(gen, dtype, activation, bias, batch, vocab, layers):
    need_extension()
    tokens, table, weights, biases = trunk_replicas(gen, dtype, batch=batch, vocab=vocab, layers=layers, bias=bias)
    scales = [0.5, 1.3, 0.7, 1.1][:layers]
    n_w = len(weights)
    op = torch.ops.rhmfast.patch_conv_stack

    def replica(table, *params):
        return op(tokens, table, list(params[:n_w]), list(params[n_w:]), 2, scales, activation)

    def solo(k, table, *params):
        return op(tokens[k], table[k], [w[k] for w in params[:n_w]], [b[k] for b in params[n_w:]], 2, scales,
                  activation)

    # Every layer's output gets a gradient (a layerwise readout), so the shortcut's first-layer path runs too.
    assert_replica_equals_solo(replica, solo, (table, *weights, *biases), gen)


def test_stack_cases_cover_both_paths():
    taken = [takes_distinct_patch_shortcut(b, 2**L, v, 2, L) for b, v, L in STACK_CASES]
    assert any(taken) and not all(taken)
    assert takes_distinct_patch_shortcut(40, 8, 3, 2, 3) and not takes_distinct_patch_shortcut(5, 8, 5, 2, 3)


@pytest.mark.parametrize("layers", [2, 3])
def test_stack_replicas_with_only_the_last_output_used(gen, layers):
    """The usual training call: only the last output's gradient (the shortcut with no first-layer gradient)."""
    need_extension()
    tokens, table, weights, biases = trunk_replicas(gen, torch.float32, batch=40, vocab=3, layers=layers)
    params = [table, *weights, *biases]
    y = patch_conv_stack(tokens, table, weights, biases, patch_size=2, scales="hcnn")
    g = torch.randn(y.shape, generator=gen)
    grads = torch.autograd.grad(y, params, g)
    for k in range(K):
        yk = patch_conv_stack(tokens[k], table[k], [w[k] for w in weights], [b[k] for b in biases], patch_size=2,
                              scales="hcnn")
        assert torch.equal(y[k], yk)
        for a, b in zip(grads, torch.autograd.grad(yk, params, g[k])):
            assert torch.equal(a[k], b[k])


def test_replica_results_are_aligned_replica_slices(gen):
    """Each replica slice of a result is contiguous and 64-byte aligned, like a solo result."""
    need_extension()
    x, w, b, pb = conv_replicas(gen, torch.float32)  # 5*3*9 floats per replica: not a multiple of 64 bytes
    y = torch.ops.rhmfast.patch_conv(x, w, b, pb, 2, 1.0, "relu")
    gx, gw, gb, gpb = torch.autograd.grad(y, (x, w, b, pb), torch.ones_like(y))
    for t in (y, gx, gw, gb, gpb):
        assert all(t[k].is_contiguous() and t[k].data_ptr() % 64 == 0 for k in range(K))
    assert not y.is_contiguous() and y.stride(0) == 144  # 135 floats rounded up to 64 bytes
    x2, w2, _, _ = conv_replicas(gen, torch.float32, batch=4, n_patches=2, c_in=16, c_out=16)
    assert torch.ops.rhmfast.patch_conv(x2, w2, None, None, 2, 1.0, "none").is_contiguous()


def test_replica_inputs_with_any_layout(gen):
    """Inputs need not be contiguous: a padded replica dim, and channels-first data, give the same bits."""
    need_extension()
    x, w, b, pb = conv_replicas(gen, torch.float64)
    op = torch.ops.rhmfast.patch_conv
    y = op(x, w, b, pb, 2, 1.0, "square")
    x_cf = x.detach().transpose(2, 3).contiguous().transpose(2, 3)  # [K, B, T, C] view of [K, B, C, T]
    assert torch.equal(op(x_cf, w, b, pb, 2, 1.0, "square"), y)
    w_t = w.detach().transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.allclose(op(x, w_t, b, pb, 2, 1.0, "square"), y)


# ---- the replica kernels against the reference -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_kernels_match_reference(gen, dtype, activation):
    need_extension()
    tol = TOLERANCE[dtype]
    x, w, b, pb = conv_replicas(gen, dtype)
    tokens, table, tb, tpb = token_replicas(gen, dtype)
    ttokens, ttable, tweights, tbiases = trunk_replicas(gen, dtype, batch=40, vocab=3, layers=3)
    cases = [
        (lambda *a: torch.ops.rhmfast.patch_conv(*a, 2, 0.7, activation),
         lambda *a: ref_conv.patch_conv(*a, patch_size=2, scale=0.7, activation=activation), (x, w, b, pb)),
        (lambda *a: torch.ops.rhmfast.token_patch_embed(tokens, *a, 2, 0.7, activation),
         lambda *a: ref_token.token_patch_embed(tokens, *a, patch_size=2, scale=0.7, activation=activation),
         (table, tb, tpb)),
        (lambda t, w1, w2, *bs: torch.ops.rhmfast.patch_conv_stack(ttokens, t, [w1, w2], list(bs), 2, [0.5, 1.0, 0.7],
                                                                   activation)[-1],
         lambda t, w1, w2, *bs: ref_stack.patch_conv_stack(ttokens, t, [w1, w2], list(bs), patch_size=2,
                                                           scales=[0.5, 1.0, 0.7], activation=activation)[-1],
         (ttable, *tweights, *tbiases)),
    ]
    for kernel, reference, inputs in cases:
        # The reference runs in float64 on the same values; float32 is compared relative to the magnitudes
        # (square through three layers makes large values).
        inputs64 = [t.detach().double().requires_grad_() for t in inputs]
        y, y_ref = kernel(*inputs), reference(*inputs64)
        g = torch.randn(y.shape, generator=gen, dtype=torch.float64)

        def close(a, r):
            atol = tol["atol"] if dtype == torch.float64 else 1e-5 * max(1.0, r.abs().max().item())
            torch.testing.assert_close(a.double(), r.detach(), rtol=tol["rtol"] * 10, atol=atol)

        close(y, y_ref)
        for a, r in zip(torch.autograd.grad(y, inputs, g.to(dtype)), torch.autograd.grad(y_ref, inputs64, g)):
            close(a, r)


def test_reference_replicas_match_reference_solo(gen):
    tol = TOLERANCE[torch.float64]
    x, w, b, pb = conv_replicas(gen, torch.float64)
    y = ref_conv.patch_conv(x, w, b, pb, patch_size=2, scale=0.3, activation="relu")
    tokens, table, tb, tpb = token_replicas(gen, torch.float64)
    z = ref_token.token_patch_embed(tokens, table, tb, tpb, patch_size=2, activation="square")
    for k in range(K):
        torch.testing.assert_close(y[k], ref_conv.patch_conv(x[k], w[k], b[k], pb[k], patch_size=2, scale=0.3,
                                                             activation="relu"), **tol)
        torch.testing.assert_close(z[k], ref_token.token_patch_embed(tokens[k], table[k], tb[k], tpb[k],
                                                                     patch_size=2, activation="square"), **tol)


# ---- gradcheck, opcheck, torch.compile -------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck(backend, gen, activation):  # noqa: F811  (backend: fixture)
    x, w, b, pb = conv_replicas(gen, torch.float64, batch=2, n_patches=2, c_in=3, c_out=2)
    assert torch.autograd.gradcheck(
        lambda *a: patch_conv(*a, patch_size=2, scale=0.7, activation=activation), (x, w, b, pb))
    tokens, table, tb, tpb = token_replicas(gen, torch.float64, batch=2, n_patches=2, vocab=3, c_out=2)
    assert torch.autograd.gradcheck(
        lambda *a: token_patch_embed(tokens, *a, patch_size=2, scale=0.7, activation=activation), (table, tb, tpb))
    for batch, vocab in ((2, 5), (12, 3)):  # plain path; distinct-patch shortcut
        tokens, table, weights, biases = trunk_replicas(gen, torch.float64, batch=batch, vocab=vocab, layers=3,
                                                        widths=(3, 2, 2))

        def stack(table, w1, w2, *bs):
            outs = patch_conv_stack(tokens, table, [w1, w2], list(bs), patch_size=2, scales=[0.5, 1.0, 2.0],
                                    activation=activation, return_all=True)
            return outs[0].sum() + outs[1].square().sum() + outs[2].sum()  # every output used

        assert torch.autograd.gradcheck(stack, (table, *weights, *biases))


def test_opcheck(gen):
    need_extension()
    ops = torch.ops.rhmfast
    for shape in (dict(), dict(batch=4, n_patches=2, c_in=16, c_out=16)):  # padded and dense replica dims
        x, w, b, pb = conv_replicas(gen, torch.float32, **shape)
        torch.library.opcheck(ops.patch_conv.default, (x, w, b, pb, 2, 0.5, "relu"))
        torch.library.opcheck(ops.patch_conv.default, (x.detach(), w.detach(), None, None, 2, 1.0, "square"))
        y = ops.patch_conv(x, w, b, pb, 2, 0.5, "relu").detach()
        torch.library.opcheck(ops.patch_conv_backward.default,
                              (torch.randn_like(y), x.detach(), w.detach(), b.detach(), pb.detach(), y, 2, 0.5, "relu",
                               [True, True, True, True]))
    tokens, table, b, pb = token_replicas(gen, torch.float32)
    torch.library.opcheck(ops.token_patch_embed.default, (tokens, table, b, pb, 2, 0.5, "square"))
    y = ops.token_patch_embed(tokens, table, b, pb, 2, 0.5, "square").detach()
    torch.library.opcheck(ops.token_patch_embed_backward.default,
                          (torch.randn_like(y), tokens, table.detach(), b.detach(), pb.detach(), None, 2, 0.5, "square",
                           [True, True, True]))
    op = ops.patch_conv_stack.default
    for requires_grad, bias, vocab, batch in ((False, True, 5, 2), (True, False, 5, 2), (True, True, 3, 12)):
        tokens, table, weights, biases = trunk_replicas(gen, torch.float32, batch=batch, vocab=vocab, layers=3,
                                                        widths=(4, 3, 5), bias=bias)
        if not requires_grad:
            table, weights, biases = table.detach(), [t.detach() for t in weights], [t.detach() for t in biases]
        torch.library.opcheck(op, (tokens, table, weights, biases, 2, [0.5, 1.0, 2.0], "relu"))
    tokens, table, weights, biases = trunk_replicas(gen, torch.float32, batch=12, vocab=3, layers=3, widths=(4, 3, 5))
    params = [t.detach() for t in (table, *weights, *biases)]
    outs = [o.detach() for o in op(tokens, params[0], params[1:3], params[3:], 2, [0.5, 1.0, 2.0], "relu")]
    torch.library.opcheck(ops.patch_conv_stack_backward.default,
                          ([torch.randn_like(outs[0]), None, torch.randn_like(outs[2])], tokens, params[0], params[1:3],
                           params[3:], outs, 2, [0.5, 1.0, 2.0], "relu"))


def _compiled_stack_matches_eager(gen, backend_name):
    need_extension()
    torch._dynamo.reset()
    tokens, table, weights, biases = trunk_replicas(gen, torch.float32, batch=12, vocab=3, layers=3)

    def f(tokens, table, w1, w2, b0, b1, b2):
        y = patch_conv_stack(tokens, table, [w1, w2], [b0, b1, b2], patch_size=2, scales=[0.5, 1.0, 2.0],
                             activation="relu")
        return y.square().sum()

    params = (table, *weights, *biases)
    eager = f(tokens, *params)
    eager_grads = torch.autograd.grad(eager, params)
    compiled = torch.compile(f, fullgraph=True, backend=backend_name)(tokens, *params)
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(torch.autograd.grad(compiled, params), eager_grads):
        torch.testing.assert_close(a, b)


def test_torch_compile_fullgraph_aot_eager(gen):
    _compiled_stack_matches_eager(gen, "aot_eager")


@pytest.mark.slow
def test_torch_compile_fullgraph_inductor(gen):
    _compiled_stack_matches_eager(gen, "inductor")


# ---- bad inputs ------------------------------------------------------------------------------------------------

def test_bad_patch_conv_inputs(backend, gen):  # noqa: F811
    x, w, b, pb = conv_replicas(gen, torch.float32, bias=True, pos_bias=True)
    x, w, b, pb = x.detach(), w.detach(), b.detach(), pb.detach()
    bad = [
        ((x, w[0]), r"weight must have shape \[K, C_out, patch_size\*C_in\] \(replica form, as x is"),
        ((x[0], w), r"x must have shape \[K, B, T, C_in\] \(replica form, as weight is"),
        ((x, w[:2]), r"x has K=3 replicas but weight has K=2"),
        ((x, w, b[0]), r"bias must have shape \[(K=)?3, (C_out=)?9\] \(replica form\)"),
        ((x, w, b[:2]), r"bias must have shape \[(K=)?3, (C_out=)?9\]"),
        ((x, w, None, pb[0]), r"pos_bias must have shape \[(K=)?3, (T/s=)?3, (C_out=)?9\] \(replica form\)"),
        ((x[None], w), r"x must have shape \[K, B, T, C_in\]"),
        ((x, w[:, :, :-1]), r"weight has 13 columns but patch_size\*C_in"),
    ]
    for args, message in bad:  # the kernels' messages name the dims (K=3), the reference's give the sizes
        with pytest.raises(ValueError, match=message):
            patch_conv(*args, patch_size=2)


def test_bad_token_patch_embed_inputs(backend, gen):  # noqa: F811
    tokens, table, b, pb = token_replicas(gen, torch.float32)
    table, b, pb = table.detach(), b.detach(), pb.detach()
    bad = [
        ((tokens, table[0]), r"table must have shape \[K, patch_size, vocab_size, C_out\] \(replica form"),
        ((tokens[0], table), r"tokens must have shape \[K, B, T\] \(replica form, as table is"),
        ((tokens[:1], table), r"tokens has K=1 replicas but table has K=3"),
        ((tokens, table, b[0]), r"bias must have shape \[(K=)?3, (C_out=)?7\] \(replica form\)"),
        ((tokens, table, None, pb[:, :2]), r"pos_bias must have shape \[(K=)?3, (T/s=)?3, (C_out=)?7\]"),
        ((tokens, table[:, :1]), r"table has 1 patch positions but patch_size is 2"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            token_patch_embed(*args, patch_size=2)
    tokens[1, 2, 3] = 4
    with pytest.raises(ValueError, match=r"token ids must be in \[0, vocab_size=4\)"):
        token_patch_embed(tokens, table, patch_size=2)


def test_bad_patch_conv_stack_inputs(backend, gen):  # noqa: F811
    for batch in (5, 40):  # plain path and distinct-patch shortcut
        tokens, table, weights, biases = trunk_replicas(gen, torch.float32, batch=batch, vocab=3, layers=3)
        table, weights, biases = table.detach(), [w.detach() for w in weights], [b.detach() for b in biases]
        bad = [
            ((tokens, table, [weights[0], weights[1][0]]), r"weights\[1\] must have shape \[K, C_2, patch_size\*C_1\] "
                                                           r"\(replica form"),
            ((tokens, table, [weights[0][:2], weights[1]]), r"weights\[0\] has K=2 replicas but table has K=3"),
            ((tokens, table, weights, [biases[0], biases[1][0], biases[2]]), r"biases\[1\] must have shape \[K, C_1\]"),
            ((tokens, table, weights, [biases[0], biases[1], biases[2][:1]]), r"biases\[2\] has K=1 replicas but "
                                                                               r"table has K=3"),
            ((tokens[0], table, weights), r"tokens must have shape \[K, B, T\]"),
            ((tokens, table[:2], weights), r"tokens has K=3 replicas but table has K=2"),
            ((tokens[0], table[0], weights), r"weights\[0\] must have shape \[C_1, patch_size\*C_0\] \(solo form"),
            ((tokens, table, [weights[1], weights[0]]), r"columns but patch_size"),
        ]
        for args, message in bad:
            with pytest.raises(ValueError, match=message):
                patch_conv_stack(*args, patch_size=2)
        tokens[2, -1, -1] = 3
        with pytest.raises(ValueError, match=r"token ids must be in \[0, vocab_size=3\)"):
            patch_conv_stack(tokens, table, weights, patch_size=2)


def test_bad_backward_inputs(gen):
    need_extension()
    x, w, b, pb = conv_replicas(gen, torch.float32)
    y = torch.ops.rhmfast.patch_conv(x, w, b, pb, 2, 1.0, "relu").detach()
    with pytest.raises(ValueError, match=r"grad_out must have the output's shape \[3, 5, 3, 9\]"):
        torch.ops.rhmfast.patch_conv_backward(y[0], x.detach(), w.detach(), None, None, y, 2, 1.0, "relu",
                                              [True, True, False, False])
    tokens, table, tb, _ = token_replicas(gen, torch.float32)
    with pytest.raises(ValueError, match=r"grad_out must have the output's shape \[3, 5, 3, 7\]"):
        torch.ops.rhmfast.token_patch_embed_backward(torch.ones(5, 3, 7), tokens, table.detach(), None, None, None, 2,
                                                     1.0, "none", [True, False, False])


# ---- CUDA ------------------------------------------------------------------------------------------------------

@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_cuda_matches_cpu(gen, activation):
    for batch, vocab in ((5, 5), (40, 3)):  # plain path; distinct-patch shortcut
        tokens, table, weights, biases = trunk_replicas(gen, torch.float64, batch=batch, vocab=vocab, layers=3)
        params = (table, *weights, *biases)
        y64 = patch_conv_stack(tokens, table, weights, biases, patch_size=2, scales="hcnn", activation=activation,
                               return_all=True)
        g = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in y64]
        grads64 = torch.autograd.grad(y64, params, g)
        for dtype in DTYPES:
            p = [t.detach().to("cuda", dtype).requires_grad_() for t in params]
            y = patch_conv_stack(tokens.cuda(), p[0], p[1:3], p[3:], patch_size=2, scales="hcnn", activation=activation,
                                 return_all=True)
            for a, b in zip(y, y64):
                torch.testing.assert_close(a.double().cpu(), b.detach(), rtol=1e-5, atol=1e-5)
            for a, b in zip(torch.autograd.grad(y, p, [t.to("cuda", dtype) for t in g]), grads64):
                torch.testing.assert_close(a.double().cpu(), b, rtol=1e-5, atol=1e-4)
    x, w, b, pb = conv_replicas(gen, torch.float64)
    y64 = patch_conv(x, w, b, pb, patch_size=2, activation=activation)
    ga = torch.autograd.grad(y64, (x, w, b, pb), torch.ones_like(y64))
    xc = [t.detach().cuda().requires_grad_() for t in (x, w, b, pb)]
    yc = patch_conv(*xc, patch_size=2, activation=activation)
    torch.testing.assert_close(yc.cpu(), y64.detach())
    for a, r in zip(torch.autograd.grad(yc, xc, torch.ones_like(yc)), ga):
        torch.testing.assert_close(a.cpu(), r)

