"""RHM generation: the C++ kernel against the PyTorch reference bit for bit, the documented word/node
contract, chunk and thread invariance, parsing samples back through the rules, uniformity, and the
without-replacement guarantees of index mode (sample, split, batches)."""
from __future__ import annotations

import pytest
import torch
from scipy import stats

import rhmfast
from rhmfast.reference import rhm_sample as ref

from conftest import (
    INT64_LIMIT,
    MODES,
    SAMPLERS,
    TOKEN_DTYPES,
    assert_same_result,
    digits_py,
    expand_py,
    feistel_py,
    iid_labels_choices_py,
    parse_back,
    random_grammar,
    rows_as_set,
)

op_sample = torch.ops.rhmfast.rhm_sample
op_decode = torch.ops.rhmfast.rhm_decode


def signed(seed: int) -> int:
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def fits(g, dtype, tree) -> bool:
    top = max(g.v, g.n_classes if tree else 0) - 1
    return top <= torch.iinfo(dtype).max


# ---- kernel == reference ---------------------------------------------------------------------

@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("mode", MODES)
def test_kernel_matches_reference_random_grammars(sampler, mode, rng):
    """Over random grammars, seeds, offsets, sizes (0, 1, odd), every dtype, with and without the tree:
    torch.ops.rhmfast.rhm_sample and the PyTorch reference give the same bits."""
    for trial in range(6):
        g = random_grammar(rng, sampler, max_pmax=(1 << 62) if mode == "index" else None)
        table = g.table()
        for n in (0, 1, rng.randrange(3, 200, 2)):
            seed = rng.choice([0, rng.randrange(1 << 32), rng.randrange(1 << 64)])
            if mode == "index":
                n = min(n, g.pmax)
                start = rng.randrange(g.pmax - n + 1)
            else:
                start = rng.choice([0, rng.randrange(1 << 20), rng.randrange(1 << 62)])
            for dtype in TOKEN_DTYPES:
                for tree in (False, True):
                    if not fits(g, dtype, tree):
                        continue
                    args = (g.n_classes, n, seed, start, mode, dtype, tree)
                    a = op_sample(table, *args[:2], signed(seed), *args[3:])
                    b = ref.rhm_sample(table, *args)
                    ctx = f"{g!r} n={n} seed={seed} start={start} {mode} {dtype} tree={tree}"
                    assert_same_result(a, b, ctx)
                    assert a[0].shape == (n, g.s**g.L)
                    assert len(a[2]) == (g.L if tree else 0)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_decode_kernel_matches_reference(sampler, rng):
    """rhm_decode: kernel == reference on random datum numbers (incl. 0 and pmax-1), all dtypes, tree."""
    for trial in range(5):
        g = random_grammar(rng, sampler, max_pmax=(1 << 62))
        table = g.table()
        numbers = [0, g.pmax - 1] + [rng.randrange(g.pmax) for _ in range(rng.randrange(0, 60))]
        datum = torch.tensor(numbers, dtype=torch.int64)
        for dtype in TOKEN_DTYPES:
            for tree in (False, True):
                if fits(g, dtype, tree):
                    assert_same_result(op_decode(table, datum, g.n_classes, dtype, tree),
                                       ref.rhm_decode(table, datum, g.n_classes, dtype, tree), repr(g))
        empty = torch.zeros(0, dtype=torch.int64)
        assert_same_result(op_decode(table, empty, g.n_classes, torch.int64, True),
                           ref.rhm_decode(table, empty, g.n_classes, torch.int64, True))


@pytest.mark.parametrize("mode", MODES)
def test_api_seeds_above_2_63(mode, rng):
    """RHM.sample with seeds >= 2^63 (64-bit patterns) equals the reference called with the same seed,
    and differs from the seed with the top bit cleared."""
    g = random_grammar(rng, max_pmax=1 << 40, min_pmax=1 << 12)
    for seed in ((1 << 63), (1 << 64) - 1, (1 << 63) + rng.randrange(1 << 63)):
        n = 64
        x, y = g.sample(n, seed=seed, mode=mode, dtype=torch.int64)
        tokens, labels, _ = ref.rhm_sample(g.table(), g.n_classes, n, seed, 0, mode, torch.int64, False)
        assert torch.equal(x, tokens) and torch.equal(y, labels)
        x_low, _ = g.sample(n, seed=seed - (1 << 63), mode=mode, dtype=torch.int64)
        assert not torch.equal(x, x_low)


def test_iid_follows_documented_word_layout(rng):
    """Labels and rule choices of iid samples follow rhm_core.h exactly: word t of sample i comes from
    Philox counter (t/4, lo(i), hi(i), 0 ^ attempt<<8), lane t%4; word 0 -> label, word 1+node -> rule
    (checked with an independent pure-Python model, incl. sample indices >= 2^32)."""
    for _ in range(4):
        g = random_grammar(rng, max_tokens=27)
        seed = rng.randrange(1 << 64)
        for start in (0, (1 << 32) - 2, rng.randrange(1 << 62)):
            tokens, labels, tree = g.sample(3, seed=seed, start=start, dtype=torch.int64, return_tree=True)
            for k in range(3):
                label, choices = iid_labels_choices_py(g, seed, start + k)
                levels = expand_py(g, label, choices)
                assert labels[k].item() == label
                assert [lvl[k].tolist() for lvl in tree] == levels


def test_index_mode_follows_feistel_contract(rng):
    """Index mode: sample i is datum pi(i), pi the documented 6-round keyed Feistel permutation with
    cycle-walking (independent pure-Python model), decoded root-digit-first."""
    for _ in range(4):
        g = random_grammar(rng, max_pmax=1 << 62, min_pmax=2)
        seed = rng.randrange(1 << 64)
        n = min(g.pmax, 5)
        start = rng.randrange(g.pmax - n + 1)
        tokens, labels, tree = g.sample(n, seed=seed, start=start, mode="index", dtype=torch.int64,
                                        return_tree=True)
        for k in range(n):
            label, digits = digits_py(g, feistel_py(start + k, g.pmax, seed))
            assert labels[k].item() == label
            assert [lvl[k].tolist() for lvl in tree] == expand_py(g, label, digits)


def rejected_indices(seed: int, n_words: int, bounds, count: int = 4, search: int = 1 << 18):
    """Sample indices i whose word t (bounds[t] its range) is rejected by uniform_below at first draw."""
    index = torch.arange(search, dtype=torch.int64)
    words = ref.iid_words(seed, index, n_words)
    bound = torch.tensor(bounds, dtype=torch.int64)
    threshold = ((1 << 32) - bound) % bound
    rejected = (((words * bound) & 0xFFFFFFFF) < threshold).any(1)
    return index[rejected][:count].tolist()


@pytest.mark.parametrize("which", ["label", "choice"])
def test_rejection_path_in_sampling(which, rng):
    """Samples whose label word or rule-choice word is rejected by uniform_below (found by scanning the
    raw Philox words) come out the same from the kernel, the reference and the Python contract model,
    also when drawn inside a window of neighbours."""
    seed = rng.randrange(1 << 64)
    if which == "label":  # many classes, one level; a rejection threshold close to n_classes
        n_classes = max(range(300_000, 300_200), key=lambda c: ((1 << 32) - c) % c)
        m = 1
        rules = torch.randint(0, 2, (1, n_classes, m, 2), dtype=torch.int32)
        bounds = [n_classes]
    else:  # many rules per symbol, two levels (three internal nodes)
        n_classes = 3
        m = max(range(100_000, 100_400), key=lambda c: ((1 << 32) - c) % c)
        rules = torch.randint(0, 3, (2, 3, m, 2), dtype=torch.int32)
        bounds = [n_classes, m, m, m]
    hits = rejected_indices(seed, len(bounds), bounds)
    assert hits, "no rejected word in the scanned range"
    g = type("Shape", (), dict(s=2, L=rules.shape[0], n_classes=n_classes, m=m))
    for i in hits:
        start = max(0, i - 3)
        a = op_sample(rules, n_classes, 7, signed(seed), start, "iid", torch.int64, True)
        b = ref.rhm_sample(rules, n_classes, 7, seed, start, "iid", torch.int64, True)
        assert_same_result(a, b, f"window around sample {i}")
        label, choices = iid_labels_choices_py(g, seed, i)
        assert a[1][i - start].item() == label
        if which == "choice":
            table = rules.long()
            root = table[0, label, choices[0]].tolist()
            leaves = [x for k, sym in enumerate(root) for x in table[1, sym, choices[1 + k]].tolist()]
            assert a[0][i - start].tolist() == leaves


def test_index_mode_pmax_above_2_62_reference():
    """Index mode for 2^62 < pmax < 2^63 (a 64-bit Feistel domain): the reference equals the kernel."""
    g = rhmfast.RHM(200, 3, 2, 5, n_classes=10000, seed=1)
    assert (1 << 62) < g.pmax < INT64_LIMIT
    a = op_sample(g.table(), g.n_classes, 16, 5, 0, "index", torch.int16, True)
    b = ref.rhm_sample(g.table(), g.n_classes, 16, 5, 0, "index", torch.int16, True)
    assert_same_result(a, b)


def test_index_mode_pmax_above_2_62_kernel():
    """Index mode for 2^62 < pmax < 2^63: the kernel follows the Feistel contract (Python-int model)."""
    g = rhmfast.RHM(200, 3, 2, 5, n_classes=10000, seed=1)
    assert (1 << 62) < g.pmax < INT64_LIMIT
    start = g.pmax - 6
    tokens, labels, tree = op_sample(g.table(), g.n_classes, 6, 5, start, "index", torch.int16, True)
    for k in range(6):
        label, digits = digits_py(g, feistel_py(start + k, g.pmax, 5))
        assert labels[k].item() == label
        assert [lvl[k].tolist() for lvl in [*tree, tokens]] == expand_py(g, label, digits)


# ---- invariance ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_chunk_invariance(mode, rng):
    """Sample i is the same whether drawn in one call or in many calls of random sizes and offsets."""
    g = random_grammar(rng, max_pmax=1 << 50, min_pmax=600)
    seed = rng.randrange(1 << 64)
    total = 500
    whole = g.sample(total, seed=seed, mode=mode, return_tree=True)
    pieces, position = [], 0
    while position < total:
        n = min(rng.choice([0, 1, 2, 7, 33, 100]), total - position)
        pieces.append(g.sample(n, seed=seed, start=position, mode=mode, return_tree=True))
        position += n
    assert torch.equal(torch.cat([p[0] for p in pieces]), whole[0])
    assert torch.equal(torch.cat([p[1] for p in pieces]), whole[1])
    for level in range(g.L + 1):
        assert torch.equal(torch.cat([p[2][level] for p in pieces]), whole[2][level])
    # An arbitrary window equals the slice of the whole.
    lo = rng.randrange(total)
    hi = rng.randrange(lo, total + 1)
    x, y = g.sample(hi - lo, seed=seed, start=lo, mode=mode)
    assert torch.equal(x, whole[0][lo:hi]) and torch.equal(y, whole[1][lo:hi])


@pytest.mark.parametrize("mode", MODES)
def test_thread_count_invariance(mode):
    """One thread and two threads give identical samples (the batch is large enough to be split)."""
    g = rhmfast.RHM(16, 2, 4, 3, seed=3)  # 64 tokens: the kernel's grain is 1024 samples
    torch.set_num_threads(1)
    one = g.sample(6000, seed=17, start=11, mode=mode, return_tree=True)
    torch.set_num_threads(2)
    two = g.sample(6000, seed=17, start=11, mode=mode, return_tree=True)
    assert_same_result((one[0], one[1], one[2]), (two[0], two[1], two[2]))


def test_different_seeds_and_modes_differ():
    """Different seeds, and iid vs index, give different streams (a smoke test of the addressing)."""
    g = rhmfast.RHM(8, 2, 2, 3, seed=0)
    a = g.sample(50, seed=1)[0]
    assert not torch.equal(a, g.sample(50, seed=2)[0])
    assert not torch.equal(a, g.sample(50, seed=1, mode="index")[0])
    assert torch.equal(a, g.sample(50, seed=1)[0])


# ---- samples parse back through the rules ------------------------------------------------------

@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("mode", MODES)
def test_samples_parse_back_to_their_labels(sampler, mode, rng):
    """Every sample parses bottom-up through the rules to its label, and the latent tree (L+1 levels,
    level 0 = labels, level L = tokens) equals the parse, level by level."""
    for _ in range(4):
        g = random_grammar(rng, sampler, max_pmax=(1 << 62) if mode == "index" else None)
        n = min(300, g.pmax) if mode == "index" else 300
        tokens, labels, tree = g.sample(n, seed=rng.randrange(1 << 64), mode=mode, return_tree=True)
        assert len(tree) == g.L + 1
        assert tree[g.L] is tokens or torch.equal(tree[g.L], tokens)
        for level, t in enumerate(tree):
            assert t.shape == (n, g.s**level) and t.dtype == tokens.dtype
        assert torch.equal(tree[0].reshape(-1).long(), labels)
        levels, choices = parse_back(g, tokens)
        assert (levels[0] >= 0).all(), f"some samples do not parse: {g!r}"
        assert torch.equal(levels[0].reshape(-1), labels)
        for level in range(g.L + 1):
            assert torch.equal(levels[level], tree[level].long()), f"level {level} of {g!r}"
        assert labels.min() >= 0 and labels.max() < g.n_classes
        assert tokens.long().min() >= 0 and tokens.long().max() < g.v


def test_parse_back_rejects_foreign_patches():
    """The parse helper itself detects inputs that the grammar cannot produce."""
    g = rhmfast.RHM(6, 2, 2, 2, seed=4)  # 12 of 36 pairs are patches of level 1
    tokens, _ = g.sample(1, seed=0, dtype=torch.int64)
    used = {tuple(r) for r in g.rules[1].reshape(-1, 2).tolist()}
    foreign = next(p for p in ((a, b) for a in range(6) for b in range(6)) if p not in used)
    tokens[0, :2] = torch.tensor(foreign)
    levels, _ = parse_back(g, tokens)
    assert levels[0].item() == -1


# ---- uniformity --------------------------------------------------------------------------------

CHI2_SEED = 20240601  # fixed: these tests must not flake; threshold p > 1e-4


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("mode", MODES)
def test_labels_and_rule_choices_are_uniform(sampler, mode):
    """Chi-square (fixed seed, p > 1e-4): labels are uniform over n_classes and rule choices (recovered
    by parsing each patch back to the rule of its parent) uniform over m, per level and per choice
    position; the choices of two sibling nodes are independent (uniform over m^2 pairs)."""
    g = rhmfast.RHM(6, 3, 2, 3, seed=CHI2_SEED, rules=sampler)  # pmax = 6 * 3^7 = 13122
    n = 12000
    tokens, labels = g.sample(n, seed=CHI2_SEED, mode=mode)
    assert stats.chisquare(torch.bincount(labels, minlength=g.n_classes).numpy()).pvalue > 1e-4
    _, choices = parse_back(g, tokens)
    for level, c in enumerate(choices):
        assert (c >= 0).all()
        counts = torch.bincount(c.reshape(-1), minlength=g.m).numpy()
        assert stats.chisquare(counts).pvalue > 1e-4, f"level {level}: {counts}"
    pairs = choices[2][:, 0] * g.m + choices[2][:, 1]
    assert stats.chisquare(torch.bincount(pairs, minlength=g.m**2).numpy()).pvalue > 1e-4
    # The label and the root's rule choice are independent too.
    joint = labels * g.m + choices[0][:, 0]
    assert stats.chisquare(torch.bincount(joint, minlength=g.n_classes * g.m).numpy()).pvalue > 1e-4


def test_chi_square_detects_a_biased_stream():
    """The chi-square check used above is able to fail: a stream whose labels skip one class fails it."""
    g = rhmfast.RHM(6, 3, 2, 3, seed=CHI2_SEED)
    _, labels = g.sample(12000, seed=CHI2_SEED)
    biased = labels[labels != 0]
    assert stats.chisquare(torch.bincount(biased, minlength=g.n_classes).numpy()).pvalue < 1e-4


# ---- index mode: without replacement ------------------------------------------------------------

@pytest.mark.parametrize("sampler", SAMPLERS)
def test_index_mode_has_no_duplicates(sampler, rng):
    """Index mode: n = 90% of pmax samples are pairwise distinct inputs (iid mode would repeat)."""
    g = rhmfast.RHM(4, 2, 2, 3, seed=rng.randrange(1 << 30), rules=sampler)  # pmax = 4 * 2^7 = 512
    n = g.pmax * 9 // 10
    seed = rng.randrange(1 << 64)
    tokens, labels = g.sample(n, seed=seed, mode="index")
    assert len(rows_as_set(tokens)) == n
    iid_tokens, _ = g.sample(n, seed=seed, mode="iid")
    assert len(rows_as_set(iid_tokens)) < n  # birthday bound: certain to repeat at this fraction


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_index_mode_full_stream_is_a_permutation(sampler, rng):
    """n == pmax in index mode gives every datum exactly once: the same set as decoding all of [0, pmax)."""
    g = random_grammar(rng, sampler, max_pmax=4096, min_pmax=2)
    seed = rng.randrange(1 << 64)
    tokens, labels, tree = g.sample(g.pmax, seed=seed, mode="index", return_tree=True)
    all_tokens, all_labels = g.decode(torch.arange(g.pmax))
    expected = rows_as_set(all_tokens, all_labels)
    assert len(expected) == g.pmax
    assert rows_as_set(tokens, labels) == expected
    # and not simply the identity order (pmax > 8 makes an identity permutation implausible)
    if g.pmax > 8:
        assert not torch.equal(tokens, all_tokens)


def test_index_mode_stops_at_pmax():
    """Index mode cannot draw past pmax; start + n == pmax is allowed."""
    g = rhmfast.RHM(4, 2, 2, 2, seed=0)  # pmax = 4 * 2^3 = 32
    assert g.sample(0, start=32, mode="index")[0].shape == (0, 4)
    assert g.sample(2, start=30, mode="index")[0].shape == (2, 4)
    with pytest.raises(ValueError, match="pmax"):
        g.sample(3, start=30, mode="index")


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_split_is_disjoint_and_sized(sampler, rng):
    """split: train and test have the requested sizes, are disjoint as inputs, and are the index-mode
    stream's ranges [0, n_train) and [n_train, n_train + n_test)."""
    g = random_grammar(rng, sampler, max_pmax=1 << 40, min_pmax=200)
    n_train = rng.randrange(1, min(g.pmax, 2000) // 2)
    n_test = rng.randrange(1, min(g.pmax - n_train, 1000) + 1)
    seed = rng.randrange(1 << 64)
    (x_tr, y_tr), (x_te, y_te) = g.split(n_train, n_test, seed=seed)
    assert x_tr.shape == (n_train, g.s**g.L) and y_tr.shape == (n_train,)
    assert x_te.shape == (n_test, g.s**g.L) and y_te.shape == (n_test,)
    train, test = rows_as_set(x_tr), rows_as_set(x_te)
    assert len(train) == n_train and len(test) == n_test and not (train & test)
    x_all, _ = g.sample(n_train + n_test, seed=seed, mode="index")
    assert torch.equal(torch.cat([x_tr, x_te]), x_all)


def test_split_whole_data_space():
    """split with n_train + n_test == pmax partitions the whole data space."""
    g = rhmfast.RHM(4, 2, 2, 2, n_classes=3, seed=9)  # pmax = 24
    (x_tr, y_tr), (x_te, y_te) = g.split(10, 14, seed=1)
    everything = rows_as_set(*g.decode(list(range(g.pmax))))
    assert rows_as_set(x_tr, y_tr) | rows_as_set(x_te, y_te) == everything
    assert not rows_as_set(x_tr, y_tr) & rows_as_set(x_te, y_te)


def test_split_with_huge_pmax_uses_iid():
    """Beyond pmax >= 2^63 split still returns the right sizes (iid draws) and distinct inputs."""
    g = rhmfast.RHM(8, 4, 2, 6, seed=2)
    assert g.pmax >= INT64_LIMIT
    (x_tr, _), (x_te, _) = g.split(100, 50, seed=3)
    assert x_tr.shape == (100, 64) and x_te.shape == (50, 64)
    assert len(rows_as_set(torch.cat([x_tr, x_te]))) == 150
    assert torch.equal(torch.cat([x_tr, x_te]), g.sample(150, seed=3)[0])


@pytest.mark.parametrize("mode", MODES)
def test_batches_are_consecutive_stream_slices(mode, rng):
    """batches(B): batch k equals sample(B, start=start + k*B), so no sample index repeats."""
    g = rhmfast.RHM(6, 2, 2, 3, seed=5)
    B, start, seed = rng.randrange(1, 40), rng.randrange(100), rng.randrange(1 << 64)
    stream = g.batches(B, seed=seed, start=start, mode=mode, return_tree=True)
    for k in range(5):
        x, y, tree = next(stream)
        ex, ey, etree = g.sample(B, seed=seed, start=start + k * B, mode=mode, return_tree=True)
        assert torch.equal(x, ex) and torch.equal(y, ey)
        assert all(torch.equal(a, b) for a, b in zip(tree, etree))


def test_index_batches_end_after_pmax():
    """In index mode the batch stream ends after exactly pmax samples (last batch shorter), covering
    every datum once."""
    g = rhmfast.RHM(4, 2, 2, 2, n_classes=3, seed=1)  # pmax = 24
    batches = list(g.batches(7, seed=4, mode="index"))
    assert [b[0].shape[0] for b in batches] == [7, 7, 7, 3]
    tokens = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert rows_as_set(tokens, labels) == rows_as_set(*g.decode(torch.arange(g.pmax)))
