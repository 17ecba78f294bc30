"""Shared fixtures and helpers of the rhmfast test suite.

Randomised tests draw their parameters from the ``rng`` fixture. Its seed is derived from one session
seed (printed in the pytest header and attached to every failing test's output) and the test's node
id, so a failure reproduces with ``RHMFAST_TEST_SEED=<seed> pytest <node id>``.
"""
from __future__ import annotations

import os
import random
import secrets
import zlib

import pytest
import torch

import rhmfast

TOKEN_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)
SAMPLERS = ("pcsl", "pcsl-2023", "first-token-uniform")
MODES = ("iid", "index")
MASK32 = 0xFFFFFFFF
INT64_LIMIT = 1 << 63

SESSION_SEED = int(os.environ.get("RHMFAST_TEST_SEED", secrets.randbits(32)))
SESSION_THREADS = torch.get_num_threads()


def pytest_report_header(config):
    return f"rhmfast test seed: RHMFAST_TEST_SEED={SESSION_SEED}"


def cuda_ready() -> bool:
    return torch.cuda.is_available() and rhmfast.backends()["cuda_kernels"]


def pytest_collection_modifyitems(config, items):
    if cuda_ready():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and rhmfast's CUDA kernels")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng(request) -> random.Random:
    """A private random.Random for this test, reproducible from the session seed and the test id."""
    seed = f"{SESSION_SEED}:{request.node.nodeid}"
    print(f"rng seed: RHMFAST_TEST_SEED={SESSION_SEED} test={request.node.nodeid}")
    request.node.user_properties.append(("rhmfast_test_seed", SESSION_SEED))
    return random.Random(seed)


@pytest.fixture(autouse=True)
def isolated_torch_state(request):
    """Every test starts with torch's global RNG seeded from the session seed and its id (inputs drawn
    without a generator reproduce too) and leaves it as it found it; afterwards the intra-op thread count
    is the session's again (tests set it, and so does code under test: sweep workers and the train
    command take one thread, also from module fixtures that ran before this one)."""
    with torch.random.fork_rng():
        torch.manual_seed(zlib.crc32(f"{SESSION_SEED}:{request.node.nodeid}".encode()))
        yield
    torch.set_num_threads(SESSION_THREADS)


# ---- random grammars ----------------------------------------------------------------------------

def random_grammar(rng: random.Random, sampler: str | None = None, *, max_tokens: int = 64, max_v: int = 9,
                   max_m: int = 5, max_pmax: int | None = None, min_pmax: int = 1) -> rhmfast.RHM:
    """A random valid grammar: s in {2, 3, 4}, s^L <= max_tokens, small v and m, any sampler."""
    for _ in range(1000):
        rules = sampler or rng.choice(SAMPLERS)
        s = rng.choice((2, 3, 4))
        depths = [L for L in range(1, 8) if s**L <= max_tokens]
        L = rng.choice(depths)
        v = rng.randint(2, max_v)
        m_cap = v ** (s - 1) if (L > 1 or rules == "first-token-uniform") else v**s
        m = rng.randint(1, min(max_m, m_cap))
        if rules == "first-token-uniform":
            n_classes = v
        else:
            n_classes = rng.randint(1, min(2 * v, v**s // m))
        pmax = n_classes * m ** ((s**L - 1) // (s - 1))
        if (max_pmax is not None and pmax > max_pmax) or pmax < min_pmax:
            continue
        return rhmfast.RHM(v, m, s, L, n_classes=n_classes, seed=rng.randrange(1 << 32), rules=rules)
    raise RuntimeError("no grammar met the constraints")


# ---- an independent, pure-Python model of the generation contract (csrc/include/rhmfast/rhm_core.h) --

def philox_py(counter, key):
    """Philox4x32-10 on Python ints: counter (c0, c1, c2, c3), key (k0, k1) -> 4 words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32
        k0, k1 = (k0 + 0x9E3779B9) & MASK32, (k1 + 0xBB67AE85) & MASK32
    return [c0, c1, c2, c3]


def seed_key(seed: int):
    seed &= (1 << 64) - 1
    return seed & MASK32, seed >> 32


def below_py(word: int, n: int, redraw):
    """Lemire's multiply-shift with rejection; redraw(attempt) -> fresh word."""
    x = word * n
    threshold = ((1 << 32) - n) % n
    attempt = 1
    while (x & MASK32) < threshold:
        x = redraw(attempt) * n
        attempt += 1
    return x >> 32


def iid_labels_choices_py(g: rhmfast.RHM, seed: int, i: int):
    """Label and breadth-first rule choices of iid sample i, straight from the documented word layout."""
    key = seed_key(seed)

    def word(t, attempt):
        return philox_py((t >> 2, i & MASK32, i >> 32, attempt << 8), key)[t & 3]  # purpose 0 ^ attempt << 8

    def draw(t, n):
        return below_py(word(t, 0), n, lambda a: word(t, a))

    n_internal = (g.s**g.L - 1) // (g.s - 1)
    return draw(0, g.n_classes), [draw(1 + node, g.m) for node in range(n_internal)]


def feistel_py(i: int, size: int, seed: int) -> int:
    """The keyed Feistel permutation of [0, size) with cycle-walking, on Python ints."""
    bits = max(2, (size - 1).bit_length())
    bits += bits & 1
    half = bits // 2
    mask = (1 << half) - 1
    key = seed_key(seed)

    def rounds(x):
        left, right = x >> half, x & mask
        for r in range(6):
            f = philox_py((right, r, 0, 1), key)[0]
            left, right = right, left ^ (f & mask)
        return (left << half) | right

    x = rounds(i)
    while x >= size:
        x = rounds(x)
    return x


def digits_py(g: rhmfast.RHM, datum: int):
    """Datum number (Python int of any size) -> label and base-m digits, root first."""
    n_internal = (g.s**g.L - 1) // (g.s - 1)
    per_class = g.m**n_internal
    label, rest = divmod(datum, per_class)
    digits = []
    for _ in range(n_internal):
        rest, d = divmod(rest, g.m)
        digits.append(d)
    return label, digits[::-1]


def expand_py(g: rhmfast.RHM, label: int, choices):
    """Top-down expansion on Python lists: the latent tree, levels 0..L (level L = tokens)."""
    rows = [{int(p): l for l, p in enumerate(g.parents[level].tolist())} for level in range(g.L)]
    tables = [r.tolist() for r in g.rules]
    levels, current, node = [[label]], [label], 0
    for level in range(g.L):
        nxt = []
        for symbol in current:
            nxt.extend(tables[level][rows[level][symbol]][choices[node]])
            node += 1
        levels.append(nxt)
        current = nxt
    return levels


# ---- parsing samples back through the rules -----------------------------------------------------

def parse_back(g: rhmfast.RHM, tokens: torch.Tensor):
    """Bottom-up parse of samples [n, s^L] through the grammar's rules.

    Returns ``(levels, choices)``: ``levels[l]`` int64 [n, s^l] (levels[L] = the tokens, levels[0] =
    the parsed label) and ``choices[l]`` int64 [n, s^l], the index of the rule that produced each
    level-(l+1) patch. Entries that do not parse (no rule produces the patch) are -1, and so are all
    their ancestors.
    """
    n = tokens.shape[0]
    s, v = g.s, g.v
    powers = torch.tensor([v ** (s - 1 - k) for k in range(s)], dtype=torch.int64)
    current = tokens.to(torch.int64)
    levels, choices = [current], []
    for level in range(g.L - 1, -1, -1):
        table = g.rules[level]  # [n_parents, m, s]
        codes = (table * powers).sum(-1).reshape(-1)
        assert codes.unique().numel() == codes.numel(), "grammar is ambiguous"
        order = codes.argsort()
        sorted_codes = codes[order]
        patches = current.reshape(n, -1, s)
        bad = (patches < 0).any(-1)
        patch_codes = (patches.clamp_min(0) * powers).sum(-1)
        pos = torch.searchsorted(sorted_codes, patch_codes).clamp_max(codes.numel() - 1)
        found = (sorted_codes[pos] == patch_codes) & ~bad
        flat = order[pos]
        parent = torch.where(found, g.parents[level][flat // g.m], torch.full_like(flat, -1))
        choice = torch.where(found, flat % g.m, torch.full_like(flat, -1))
        levels.insert(0, parent)
        choices.insert(0, choice)
        current = parent
    return levels, choices


def rows_as_set(*tensors) -> set:
    """Rows of same-length 2-D/1-D tensors (concatenated side by side) as a set of tuples."""
    cols = [t.to(torch.int64).reshape(t.shape[0], -1) for t in tensors]
    return set(map(tuple, torch.cat(cols, dim=1).tolist()))


def assert_same_result(a, b, context: str = ""):
    """Bitwise equality of two (tokens, labels, tree) op results, dtypes included."""
    ta, ya, tra = a
    tb, yb, trb = b
    assert ta.dtype == tb.dtype and ya.dtype == yb.dtype == torch.int64, context
    assert torch.equal(ta, tb), f"tokens differ {context}"
    assert torch.equal(ya, yb), f"labels differ {context}"
    assert len(tra) == len(trb), context
    for level, (x, y) in enumerate(zip(tra, trb)):
        assert x.dtype == y.dtype and torch.equal(x, y), f"tree level {level} differs {context}"


@pytest.fixture
def trained(monkeypatch):
    """The hashes of the runs the local sweep engine is handed, i.e. trains. Recorded in this process: the
    runs themselves happen in spawned workers, out of a monkeypatch's reach."""
    from rhmfast.studies import engines
    from rhmfast.studies.runs import config_hash

    hashes = []

    class RecordingEngine(engines.LocalEngine):
        def map(self, configs, on_result, on_failure):
            hashes.extend(config_hash(c) for c in configs)
            super().map(configs, on_result, on_failure)

    monkeypatch.setitem(engines.ENGINES, "local", RecordingEngine)
    return hashes
