"""Exact inference by belief propagation (the rhm_posterior op, rhmfast.data.inference): the kernel and the
reference against a brute-force enumeration of every derivation of tiny grammars, impossible evidence,
deep trees (nothing underflows), Bayes-optimality on sampled data, invariances, opcheck and torch.compile,
argument checks, and (with a GPU) the CUDA kernel against the CPU."""
from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import rhmfast
from rhmfast import _backend
from rhmfast.data import inference
from rhmfast.reference import rhm_posterior as reference

from conftest import SAMPLERS, TOKEN_DTYPES, expand_py

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")
TOL = 1e-12
BAYES_SEED = 2024  # fixed so the statistical comparisons do not flake

# (sampler, v, m, s, L, n_classes): s = 2, L = 2 grammars, one L = 3, one s = 3 and one L = 1 per sampler,
# n_classes below and above v, and a pcsl-2023 grammar where only some symbols own rules (parents [1, 2, 4]).
BASE = [(3, 2, 2, 2, 3), (4, 2, 2, 2, 2), (4, 3, 2, 2, 4), (3, 2, 2, 3, 3), (3, 2, 3, 2, 3), (3, 2, 3, 1, 3)]
CASES = ([(sampler, v, m, s, L, v if sampler == "first-token-uniform" else nc)
          for sampler in SAMPLERS for v, m, s, L, nc in BASE]
         + [("pcsl", 4, 2, 2, 2, 5), ("pcsl-2023", 4, 2, 2, 2, 6), ("pcsl-2023", 4, 2, 2, 3, 1)])
IMPLS = ("kernel", "reference")


def run(impl, g, tokens, mask=None, leaves=True):
    """The op (compiled kernel or reference) on the grammar's table, as inference.infer calls it."""
    op = torch.ops.rhmfast.rhm_posterior if impl == "kernel" else reference.rhm_posterior
    table = g.table(tokens.device)
    return op(table, inference._owned(g, table.device), tokens, mask, g.n_classes, g.v, leaves)


def derivations(g):
    """Every derivation of every label (each of probability 1 / pmax): leaves int64 [pmax, s^L], labels [pmax]."""
    n_internal = (g.s**g.L - 1) // (g.s - 1)
    leaves, labels = [], []
    for label in range(g.n_classes):
        for choices in itertools.product(range(g.m), repeat=n_internal):
            leaves.append(expand_py(g, label, choices)[-1])
            labels.append(label)
    return torch.tensor(leaves, dtype=torch.int64), torch.tensor(labels, dtype=torch.int64)


def brute_force(g, all_leaves, all_labels, tokens, mask):
    """Exact posterior, log_prob and leaf posterior of evidence (tokens, mask) by counting the derivations that
    agree with the visible leaves; NaN rows and -inf where none does."""
    hidden = torch.zeros(tokens.shape, dtype=torch.bool) if mask is None else mask
    agree = ((all_leaves.unsqueeze(0) == tokens.long().unsqueeze(1)) | hidden.unsqueeze(1)).all(-1).double()
    count = agree.sum(1)
    label_counts = agree @ torch.nn.functional.one_hot(all_labels, g.n_classes).double()
    leaf_counts = torch.einsum("bn,nit->bit", agree, torch.nn.functional.one_hot(all_leaves, g.v).double())
    log_prob = torch.log(count) - math.log(all_leaves.shape[0])
    return label_counts / count.unsqueeze(1), log_prob, leaf_counts / count.view(-1, 1, 1)


def assert_close_with_nan(actual, expected, context=""):
    assert actual.dtype == torch.float64 and actual.shape == expected.shape, context
    assert torch.equal(actual.isnan(), expected.isnan()), context
    assert torch.equal(actual.isinf(), expected.isinf()), context
    finite = expected.isfinite()
    assert torch.allclose(actual[finite], expected[finite], rtol=0, atol=TOL), \
        f"{context}: max error {(actual[finite] - expected[finite]).abs().max()}"
    assert torch.equal(actual[expected.isinf()], expected[expected.isinf()]), context


def masks(rng, batch, d):
    """Named masks: none, nothing hidden, everything hidden, the last leaf, the first leaf, random ones."""
    out = {"none": None, "nothing": torch.zeros(batch, d, dtype=torch.bool),
           "everything": torch.ones(batch, d, dtype=torch.bool)}
    out["last"] = out["nothing"].clone()
    out["last"][:, -1] = True
    out["first"] = out["nothing"].clone()
    out["first"][:, 0] = True
    for p in (0.3, 0.7):
        out[f"random{p}"] = torch.tensor([[rng.random() < p for _ in range(d)] for _ in range(batch)])
    return out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_matches_brute_force(case, impl, rng):
    """posterior, log_prob and leaf_posterior equal exact counts over every derivation (1e-12) for every string
    the grammar produces and random strings (most impossible), under masks hiding nothing, everything, the
    last leaf, the first leaf and random sets; any token dtype."""
    sampler, v, m, s, L, n_classes = case
    g = rhmfast.RHM(v, m, s, L, n_classes=n_classes, seed=rng.randrange(1000), rules=sampler)
    all_leaves, all_labels = derivations(g)
    assert all_leaves.shape[0] == g.pmax
    strings = torch.cat([all_leaves.unique(dim=0), torch.randint(0, v, (64, g.input_dim))])
    tokens = strings.to(TOKEN_DTYPES[CASES.index(case) % len(TOKEN_DTYPES)])
    for name, mask in masks(rng, tokens.shape[0], g.input_dim).items():
        expected = brute_force(g, all_leaves, all_labels, tokens, mask)
        actual = run(impl, g, tokens, mask)
        for what, a, e in zip(("posterior", "log_prob", "leaf_posterior"), actual, expected):
            assert_close_with_nan(a, e, f"{case} mask={name} {what}")


def random_weights(g, gen, zeros: bool = False) -> torch.Tensor:
    """Rule probabilities [L, R, m] for g's table: random rows summing to 1 (with ``zeros``, some rules never
    chosen, as Zipf with exponent inf does)."""
    L, R, m, _ = g.table().shape
    w = torch.rand(L, R, m, generator=gen, dtype=torch.float64) + 0.05
    if zeros:
        w[..., 1:] *= torch.rand(L, R, m - 1, generator=gen, dtype=torch.float64) < 0.5
    return w / w.sum(-1, keepdim=True)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", [c for c in CASES if c[2] > 1][::3], ids=lambda c: "-".join(map(str, c)))
def test_weighted_rules_match_brute_force(case, impl, rng):
    """With rule probabilities (Zipf productions), posterior, log_prob and leaf_posterior equal the exact sums
    of derivation probabilities (label 1/n_classes times the weight of every rule choice), some rules of
    weight 0 included, under every mask."""
    sampler, v, m, s, L, n_classes = case
    g = rhmfast.RHM(v, m, s, L, n_classes=n_classes, seed=rng.randrange(1000), rules=sampler)
    gen = torch.Generator().manual_seed(rng.randrange(1 << 30))
    n_internal = (s**L - 1) // (s - 1)
    table = g.table().long()
    op = torch.ops.rhmfast.rhm_posterior if impl == "kernel" else reference.rhm_posterior
    for zeros in (False, True):
        w = random_weights(g, gen, zeros)
        leaves, labels, probs = [], [], []
        for label in range(n_classes):
            for choices in itertools.product(range(m), repeat=n_internal):
                tree = expand_py(g, label, choices)
                p = 1.0 / n_classes
                node = 0
                for level in range(L):
                    for symbol in tree[level]:
                        p *= float(w[level, symbol, choices[node]])
                        node += 1
                leaves.append(tree[-1])
                labels.append(label)
                probs.append(p)
        all_leaves, prob = torch.tensor(leaves), torch.tensor(probs, dtype=torch.float64)
        tokens = torch.cat([all_leaves.unique(dim=0), torch.randint(0, v, (16, g.input_dim))])
        for name, mask in masks(rng, tokens.shape[0], g.input_dim).items():
            hidden = torch.zeros(tokens.shape, dtype=torch.bool) if mask is None else mask
            agree = ((all_leaves.unsqueeze(0) == tokens.unsqueeze(1)) | hidden.unsqueeze(1)).all(-1).double() * prob
            total = agree.sum(1)
            expected = (agree @ torch.nn.functional.one_hot(torch.tensor(labels), n_classes).double() / total[:, None],
                        total.log(),
                        torch.einsum("bn,nit->bit", agree, torch.nn.functional.one_hot(all_leaves, v).double())
                        / total.view(-1, 1, 1))
            actual = op(table.int(), inference._owned(g, CPU), tokens, mask, n_classes, v, True, w)
            for what, a, e in zip(("posterior", "log_prob", "leaf_posterior"), actual, expected):
                assert_close_with_nan(a, e, f"{case} zeros={zeros} mask={name} {what}")


def test_uniform_weights_equal_no_weights(rng):
    """Weights 1/m everywhere give the uniform grammar's results (to rounding)."""
    g = rhmfast.RHM(6, 3, 2, 4, seed=rng.randrange(1000))
    tokens, _ = g.sample(50, seed=1)
    mask = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    uniform = torch.full((*g.table().shape[:3],), 1 / 3, dtype=torch.float64)
    for a, e in zip(run("kernel", g, tokens, mask), torch.ops.rhmfast.rhm_posterior(
            g.table(), inference._owned(g, CPU), tokens, mask, g.n_classes, g.v, True, uniform)):
        assert torch.allclose(a, e, rtol=0, atol=1e-12, equal_nan=True)


def test_pcsl_2023_case_has_symbols_without_rules():
    """The last brute-force case exercises partial rule ownership, and _owned marks exactly the parents."""
    sampler, v, m, s, L, n_classes = CASES[-1]
    g = rhmfast.RHM(v, m, s, L, n_classes=n_classes, seed=0, rules=sampler)
    assert [len(p) for p in g.parents] == [1, 2, 4]
    owned = inference._owned(g, CPU)
    assert owned.shape == g.table().shape[:2]
    for level, parents in enumerate(g.parents):
        assert owned[level].nonzero().flatten().tolist() == parents.tolist()


@pytest.mark.parametrize("impl", IMPLS)
def test_rows_of_symbols_without_rules_are_never_read(impl, rng):
    """Filling the table rows of symbols that own no rules (pcsl-2023) with other symbols changes nothing:
    such a symbol's message is 0 whatever its row says."""
    g = rhmfast.RHM(4, 2, 2, 3, n_classes=1, seed=0, rules="pcsl-2023")
    tokens, _ = g.sample(300, seed=rng.randrange(1 << 30))
    mask = torch.rand(tokens.shape) < 0.5
    expected = run(impl, g, tokens, mask)
    garbled = g.table().clone()
    owned = inference._owned(g, CPU)
    garbled[~owned] = torch.randint(0, g.v, garbled[~owned].shape, dtype=torch.int32)
    op = torch.ops.rhmfast.rhm_posterior if impl == "kernel" else reference.rhm_posterior
    actual = op(garbled, owned, tokens, mask, g.n_classes, g.v, True)
    for a, e in zip(actual, expected):
        assert torch.equal(a, e)


@pytest.mark.parametrize("impl", IMPLS)
def test_impossible_evidence_gives_nan_rows(impl):
    """A string no derivation yields: log_prob -inf and NaN posterior and leaf rows (visible leaves included),
    next to possible rows that stay exact; hiding the offending leaves makes it possible again."""
    g = rhmfast.RHM(4, 2, 2, 2, seed=1)
    possible, labels = g.sample(3, seed=5)
    all_leaves, _ = derivations(g)
    impossible = next(t for t in itertools.product(range(4), repeat=4)
                      if not (all_leaves == torch.tensor(t)).all(1).any())
    tokens = torch.cat([possible, torch.tensor([impossible], dtype=possible.dtype)])
    post, logp, leaf = run(impl, g, tokens)
    assert torch.isnan(post[3]).all() and torch.isnan(leaf[3]).all()
    assert logp[3] == -math.inf
    assert torch.equal(post[:3].argmax(1), labels) and logp[:3].isfinite().all()
    mask = torch.ones(4, 4, dtype=torch.bool)
    post, logp, leaf = run(impl, g, tokens, mask)
    assert torch.allclose(logp, torch.zeros(4, dtype=torch.float64), atol=1e-15)


@pytest.mark.parametrize("impl", IMPLS)
def test_whole_string_log_prob_is_exact(impl, rng):
    """With every leaf visible, log P(string) = -log(n_classes) - n_internal log(m) for every sampled string,
    and the posterior is the one-hot of its label (the grammar is unambiguous)."""
    for sampler in SAMPLERS:
        g = rhmfast.RHM(8, 3, 2, 4, seed=rng.randrange(1000), rules=sampler)
        tokens, labels = g.sample(500, seed=rng.randrange(1 << 30))
        post, logp, leaf = run(impl, g, tokens, leaves=False)
        n_internal = (g.input_dim - 1) // (g.s - 1)
        expected = -math.log(g.n_classes) - n_internal * math.log(g.m)
        assert torch.allclose(logp, torch.full_like(logp, expected), rtol=0, atol=1e-12)
        assert torch.equal(post, torch.nn.functional.one_hot(labels, g.n_classes).double())
        assert leaf.shape == (0,)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("v, m, L", [(8, 2, 7), (4, 4, 10)])
def test_deep_trees_do_not_underflow(v, m, L, impl, rng):
    """L = 7 and L = 10 with s = 2 (log P far below float64's exp range for L = 10, -1023 log 4): rows of the
    posterior and leaf posteriors sum to 1, log_prob is finite for sampled strings under random masks and
    exact without one."""
    g = rhmfast.RHM(v, m, 2, L, seed=rng.randrange(1000))
    tokens, labels = g.sample(40 if L == 10 else 200, seed=rng.randrange(1 << 30))
    n_internal = g.input_dim - 1
    _, logp, _ = run(impl, g, tokens, leaves=False)
    assert torch.allclose(logp, torch.full_like(logp, -math.log(v) - n_internal * math.log(m)), rtol=1e-14)
    assert L != 10 or logp.max() < math.log(torch.finfo(torch.float64).tiny)  # P(string) itself would underflow
    for p in (0.2, 0.5, 0.9):
        mask = torch.rand(tokens.shape) < p
        post, logp, leaf = run(impl, g, tokens, mask)
        assert logp.isfinite().all() and (logp < 0).all()
        assert torch.allclose(post.sum(1), torch.ones(len(tokens), dtype=torch.float64), atol=1e-12)
        assert torch.allclose(leaf.sum(2), torch.ones(leaf.shape[:2], dtype=torch.float64), atol=1e-12)
        assert (leaf >= 0).all() and (post >= 0).all()
        # the true leaves and labels are always possible
        assert (leaf.gather(2, tokens.long().unsqueeze(2)) > 0).all()
        assert (post.gather(1, labels.unsqueeze(1)) > 0).all()


def test_kernel_matches_reference_on_deep_trees(rng):
    """Kernel and reference agree on large grammars and deep trees (log_prob sums a log per node: 1e-11)."""
    for v, m, s, L, sampler in [(8, 2, 2, 7, "pcsl"), (16, 4, 3, 3, "first-token-uniform"),
                                (6, 3, 2, 5, "pcsl-2023")]:
        g = rhmfast.RHM(v, m, s, L, seed=rng.randrange(1000), rules=sampler)
        tokens, _ = g.sample(300, seed=rng.randrange(1 << 30))
        mask = torch.rand(tokens.shape) < rng.random()
        kernel, ref = run("kernel", g, tokens, mask), run("reference", g, tokens, mask)
        assert torch.allclose(kernel[0], ref[0], rtol=0, atol=1e-10)
        assert torch.allclose(kernel[1], ref[1], rtol=0, atol=1e-11)
        assert torch.allclose(kernel[2], ref[2], rtol=0, atol=1e-10)


# ---- Bayes optimality on sampled data -----------------------------------------------------------

def test_argmax_posterior_is_error_free_without_mask():
    """The RHM is unambiguous: with every leaf visible the argmax posterior is the label of every sample."""
    for sampler in SAMPLERS:
        g = rhmfast.RHM(8, 4, 2, 4, seed=3, rules=sampler)
        tokens, labels = g.sample(4000, seed=BAYES_SEED)
        assert torch.equal(inference.posterior(g, tokens).argmax(1), labels)


def _calibration_gap(probabilities, truth):
    """|accuracy of the argmax - mean max probability| and 4 standard errors of the accuracy."""
    top, guess = probabilities.max(1)
    gap = abs((guess == truth).double().mean().item() - top.mean().item())
    return gap, 4 * math.sqrt((top * (1 - top)).mean().item() / len(truth)) + 1e-3


def test_hidden_last_leaf_posterior_is_calibrated():
    """With the last leaf hidden, the argmax of its posterior is right as often as its maximal probability
    says (Bayes-optimal prediction is calibrated), and it beats chance; also for the label with half the
    leaves hidden."""
    g = rhmfast.RHM(8, 4, 2, 4, seed=3)
    tokens, labels = g.sample(4000, seed=BAYES_SEED)
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    mask[:, -1] = True
    leaf = inference.leaf_posterior(g, tokens, mask)[:, -1]
    gap, tolerance = _calibration_gap(leaf, tokens[:, -1].long())
    assert gap < tolerance
    assert leaf.max(1).values.mean() > 1.5 / g.v
    half = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(BAYES_SEED)) < 0.5
    gap, tolerance = _calibration_gap(inference.posterior(g, tokens, half), labels)
    assert gap < tolerance


# ---- invariances, backends, dispatcher ----------------------------------------------------------

def test_threads_batch_dtype_and_layout_invariance(rng):
    """The kernel's bits do not depend on the thread count, the batch a sample comes in, the token dtype or
    the inputs' strides."""
    g = rhmfast.RHM(6, 3, 2, 4, seed=rng.randrange(1000), rules="pcsl-2023")
    tokens, _ = g.sample(257, seed=rng.randrange(1 << 30))
    mask = torch.rand(tokens.shape) < 0.4
    torch.set_num_threads(2)
    expected = run("kernel", g, tokens, mask)
    torch.set_num_threads(1)
    variants = [run("kernel", g, tokens, mask)]
    torch.set_num_threads(2)
    variants.append([torch.cat(parts) for parts in zip(*(run("kernel", g, tokens[i:i + 50], mask[i:i + 50])
                                                         for i in range(0, 257, 50)))])
    variants += [run("kernel", g, tokens.to(dtype), mask) for dtype in TOKEN_DTYPES]
    variants.append(run("kernel", g, tokens.t().contiguous().t(), mask.t().contiguous().t()))
    for variant in variants:
        for a, e in zip(variant, expected):
            assert torch.equal(a, e)


def test_public_functions_agree_with_the_op(rng):
    """posterior / log_prob / leaf_posterior / infer are the op's outputs; leaves=False gives the same
    posterior and log_prob."""
    g = rhmfast.RHM(5, 2, 3, 2, seed=rng.randrange(1000))
    tokens, _ = g.sample(100, seed=rng.randrange(1 << 30))
    mask = torch.rand(tokens.shape) < 0.5
    post, logp, leaf = run("kernel", g, tokens, mask)
    assert torch.equal(inference.posterior(g, tokens, mask), post)
    assert torch.equal(inference.log_prob(g, tokens, mask), logp)
    assert torch.equal(inference.leaf_posterior(g, tokens, mask), leaf)
    both = inference.infer(g, tokens, mask)
    assert torch.equal(both.posterior, post) and torch.equal(both.log_prob, logp)
    assert both.leaf_posterior.shape == (0,)


def test_forced_reference_backend(monkeypatch, rng):
    """With RHMFAST_BACKEND=torch the public functions run the reference and agree with the kernel."""
    g = rhmfast.RHM(6, 2, 2, 4, seed=rng.randrange(1000))
    tokens, _ = g.sample(64, seed=rng.randrange(1 << 30))
    mask = torch.rand(tokens.shape) < 0.5
    expected = inference.infer(g, tokens, mask, leaves=True)
    calls = []
    real = reference.rhm_posterior
    monkeypatch.setattr(reference, "rhm_posterior", lambda *args: calls.append(args) or real(*args))
    monkeypatch.setattr(_backend, "_state", {})
    monkeypatch.setenv("RHMFAST_BACKEND", "torch")
    actual = inference.infer(g, tokens, mask, leaves=True)
    assert len(calls) == 1
    for a, e in zip(actual, expected):
        assert torch.allclose(a, e, rtol=0, atol=1e-12)


def _opcheck_cases():
    g = rhmfast.RHM(5, 2, 2, 3, seed=1)
    g23 = rhmfast.RHM(4, 2, 2, 3, n_classes=1, seed=0, rules="pcsl-2023")
    tokens, _ = g.sample(6, seed=2)
    tokens23, _ = g23.sample(5, seed=3)
    mask = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    args = lambda grammar: (grammar.table(), inference._owned(grammar, CPU))  # noqa: E731
    return [
        (*args(g), tokens, None, 5, 5, True),
        (*args(g), tokens.long(), mask, 5, 5, False),
        (*args(g), tokens[:0], None, 5, 5, True),
        (*args(g23), tokens23.to(torch.int16), torch.ones(5, 8, dtype=torch.bool), 1, 4, True),
        (*args(g), tokens, mask, 5, 5, True, random_weights(g, torch.Generator().manual_seed(0))),
    ]


@pytest.mark.parametrize("case", range(5))
def test_opcheck(case):
    """torch.library.opcheck passes its default checks (schema, fake tensor, autograd registration: float64
    outputs of integer data with no autograd formula, and AOT dispatch)."""
    result = torch.library.opcheck(torch.ops.rhmfast.rhm_posterior.default, _opcheck_cases()[case])
    assert all(value == "SUCCESS" for value in result.values()), result


def test_torch_compile_fullgraph():
    """torch.compile(fullgraph=True) traces through the op (its fake kernel) and gives the eager result."""
    torch._dynamo.reset()
    g = rhmfast.RHM(5, 2, 2, 3, seed=1)
    tokens, _ = g.sample(20, seed=2)
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    mask[:, ::3] = True
    owned = inference._owned(g, CPU)

    def f(table, owned, tokens, mask):
        post, logp, leaf = torch.ops.rhmfast.rhm_posterior(table, owned, tokens, mask, 5, 5, True)
        return post.argmax(1), logp * 2, leaf[:, -1]

    eager = f(g.table(), owned, tokens, mask)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(g.table(), owned, tokens, mask)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)


def test_benchmark_script_smoke(tmp_path):
    """benchmarks/bench_posterior.py runs (toy sizes) and writes its JSON and markdown."""
    proc = subprocess.run([sys.executable, "benchmarks/bench_posterior.py", "--quick", "--n", "64", "--out",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = next(f for f in os.listdir(tmp_path) if f.endswith(".json"))
    rows = json.loads((tmp_path / name).read_text())["rows"]
    assert len(rows) == 12 and all(row["kernel_samples_per_s"] > 0 for row in rows)
    assert (tmp_path / name.replace(".json", ".md")).exists()


# ---- argument checks ------------------------------------------------------------------------------

def test_public_argument_checks():
    """Wrong grammar, tokens or mask types, dtypes, shapes, devices and values raise TypeError / ValueError
    naming the parameter and what it allows; tokens at hidden positions are never read."""
    g = rhmfast.RHM(4, 2, 2, 3, seed=0)
    tokens, _ = g.sample(3, seed=0)
    for fn in (inference.posterior, inference.log_prob, inference.leaf_posterior):
        with pytest.raises(TypeError, match="grammar must be an rhmfast.RHM"):
            fn("grammar", tokens)
        with pytest.raises(TypeError, match=r"tokens must be an integer tensor \[B, s\^L = 8\]"):
            fn(g, tokens.tolist())
        with pytest.raises(TypeError, match="tokens must have dtype uint8, int16, int32 or int64"):
            fn(g, tokens.float())
        for bad in (tokens[0], tokens[:, :7], tokens.reshape(3, 2, 4)):
            with pytest.raises(ValueError, match=r"tokens must have shape \[B, s\^L = 8\]"):
                fn(g, bad)
        with pytest.raises(ValueError, match="tokens must be on a CPU or CUDA device"):
            fn(g, tokens.to("meta"))
        for bad_value, dtype in ((4, torch.uint8), (-1, torch.int16), (1 << 40, torch.int64)):
            bad = tokens.to(dtype, copy=True)
            bad[1, 5] = bad_value
            words = rf"tokens must be in \[0, v=4\) at visible positions, got {bad_value}"
            with pytest.raises(ValueError, match=words):
                fn(g, bad)
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    for fn in (inference.posterior, inference.leaf_posterior, inference.log_prob):
        with pytest.raises(TypeError, match="mask must be None or a bool tensor"):
            fn(g, tokens, mask.tolist())
        with pytest.raises(TypeError, match="mask must be a bool tensor .True = hidden., got dtype torch.uint8"):
            fn(g, tokens, mask.to(torch.uint8))
        with pytest.raises(ValueError, match=r"mask must have the shape of tokens \[3, 8\], got \[3, 4\]"):
            fn(g, tokens, mask[:, :4])
        with pytest.raises(ValueError, match="mask must be on the device of tokens"):
            fn(g, tokens, mask.to("meta"))
    with pytest.raises(TypeError, match="leaves must be a bool"):
        inference.infer(g, tokens, leaves=1)
    # a hidden position may hold anything, e.g. a placeholder v
    placeholder = tokens.clone()
    placeholder[:, -1] = 4
    mask[:, -1] = True
    assert torch.equal(inference.posterior(g, placeholder, mask), inference.posterior(g, tokens, mask))


@pytest.mark.parametrize("impl", IMPLS)
def test_op_argument_checks(impl):
    """The op (kernel and reference alike) refuses malformed tables, owner masks and inputs with the same
    exception types and words."""
    g = rhmfast.RHM(4, 2, 2, 3, seed=0)
    table, owned = g.table(), inference._owned(g, CPU)
    tokens, _ = g.sample(3, seed=0)
    op = torch.ops.rhmfast.rhm_posterior if impl == "kernel" else reference.rhm_posterior
    bad_entry = table.clone()
    bad_entry[1, 2, 0, 1] = 4
    bad_token = tokens.to(torch.int16)
    bad_token[2, 7] = -2
    cases = [
        (TypeError, "rules must be int32", (table.long(), owned, tokens, None, 4, 4)),
        (ValueError, r"rules must have shape \[L, R, m, s\]", (table[0], owned, tokens, None, 4, 4)),
        (ValueError, r"rules must have R >= max\(n_classes, v\) = 5", (table, owned, tokens, None, 5, 4)),
        (ValueError, "n_classes must be >= 1", (table, owned, tokens, None, 0, 4)),
        (ValueError, r"rules entries must be in \[0, v=4\), found values in \[0, 4\]", (bad_entry, owned, tokens,
                                                                                       None, 4, 4)),
        (TypeError, "owned must be bool", (table, owned.int(), tokens, None, 4, 4)),
        (ValueError, r"owned must have shape \[L, R\] = \[3, 4\]", (table, owned[:2], tokens, None, 4, 4)),
        (TypeError, "tokens must be uint8, int16, int32 or int64", (table, owned, tokens.float(), None, 4, 4)),
        (ValueError, r"tokens must have shape \[B, s\^L = 8\]", (table, owned, tokens[:, :4], None, 4, 4)),
        (TypeError, "mask must be bool", (table, owned, tokens, tokens, 4, 4)),
        (ValueError, "mask must have the shape of tokens", (table, owned, tokens, tokens[:2] > 0, 4, 4)),
        (ValueError, r"tokens must be in \[0, v=4\) at visible positions, got -2", (table, owned, bad_token, None,
                                                                                     4, 4)),
    ]
    for error, words, args in cases:
        with pytest.raises(error, match=words):
            op(*args, True)
    weights = torch.full((3, 4, 2), 0.5, dtype=torch.float64)
    negative = weights.clone()
    negative[0, 1, 1] = -0.5
    for error, words, w in [(TypeError, "weights must be float64", weights.float()),
                            (ValueError, r"weights must have shape \[L, R, m\] = \[3, 4, 2\]", weights[:, :, :1]),
                            (ValueError, r"weights must be finite and >= 0", negative),
                            (ValueError, r"weights must be finite and >= 0", weights * math.nan)]:
        with pytest.raises(error, match=words):
            op(table, owned, tokens, None, 4, 4, True, w)


# ---- CUDA -------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_cuda_matches_cpu(sampler, rng):
    """The CUDA kernel gives the CPU kernel's results (to float64 rounding) for every token dtype, with and
    without a mask and the downward pass, on shallow and deep trees, impossible strings included."""
    for v, m, s, L in [(8, 3, 2, 4), (5, 2, 3, 3), (8, 2, 2, 7), (6, 3, 4, 1)]:
        g = rhmfast.RHM(v, m, s, L, seed=rng.randrange(1000), rules=sampler)
        tokens, _ = g.sample(1000, seed=rng.randrange(1 << 30))
        tokens[-10:] = torch.randint(0, v, (10, g.input_dim), dtype=tokens.dtype)
        for dtype in TOKEN_DTYPES:
            for mask in (None, torch.rand(tokens.shape) < 0.5):
                for leaves in (False, True):
                    cpu = run("kernel", g, tokens.to(dtype), mask, leaves)
                    gpu = run("kernel", g, tokens.to(dtype).cuda(), None if mask is None else mask.cuda(), leaves)
                    for a, e in zip(gpu, cpu):
                        assert a.is_cuda and a.shape == e.shape
                        assert torch.equal(a.cpu().isnan(), e.isnan())
                        assert torch.allclose(a.cpu(), e, rtol=1e-12, atol=1e-12, equal_nan=True)
        w = random_weights(g, torch.Generator().manual_seed(rng.randrange(1 << 30)), zeros=True)
        table, owned = g.table(), inference._owned(g, CPU)
        cpu = torch.ops.rhmfast.rhm_posterior(table, owned, tokens, None, g.n_classes, v, True, w)
        gpu = torch.ops.rhmfast.rhm_posterior(table.cuda(), owned.cuda(), tokens.cuda(), None, g.n_classes, v, True,
                                              w.cuda())
        for a, e in zip(gpu, cpu):
            assert torch.allclose(a.cpu(), e, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.cuda
def test_cuda_public_functions_and_checks():
    """The public functions run on CUDA tokens, and a visible token out of range raises the CPU's ValueError."""
    g = rhmfast.RHM(6, 2, 2, 4, seed=1)
    tokens, labels = g.sample(300, seed=1, device="cuda")
    assert torch.equal(inference.posterior(g, tokens).argmax(1), labels)
    bad = tokens.clone()
    bad[0, 3] = 6
    with pytest.raises(ValueError, match=r"tokens must be in \[0, v=6\) at visible positions, got 6"):
        inference.log_prob(g, bad)
    mask = torch.zeros(bad.shape, dtype=torch.bool, device="cuda")
    mask[0, 3] = True
    assert inference.log_prob(g, bad, mask).isfinite().all()
