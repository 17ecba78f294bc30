"""Bad input at the public API: each row is (what to call, the exception type, a regex that names the parameter
(or the file and the field) and, where there is one, the allowed range and the received value).

Covers the RHM constructor and its samplers (sample, split, batches, decode, table), the learners'
constructors and inputs (HierarchicalCNN, FullyConnected, RenLayerwiseLearner), the layers of rhmfast.nn,
and grammar files: a valid file written by RHM.save with one field corrupted per case must make RHM.load
raise a ValueError naming the file and the field."""
import json
import math

import pytest
import torch

from rhmfast import RHM
from rhmfast.data.rule_samplers import SAMPLERS
from rhmfast.models import FullyConnected, HierarchicalCNN, RenLayerwiseLearner
from rhmfast.nn import PatchConv1d, TokenPatchEmbedding

G = RHM(4, 2, 2, 3, seed=0)  # s^L = 8 tokens, pmax = 4 * 2^7 = 512
X, _ = G.sample(6, seed=1)


def tokens(length=8, value=None, dtype=torch.int64):
    t = torch.zeros(2, length, dtype=dtype) if value is None else torch.full((2, length), value, dtype=dtype)
    return t


if torch.cuda.is_available():  # a device that is not there: one index past the last GPU
    MISSING_CUDA, MISSING_CUDA_MATCH = f"cuda:{torch.cuda.device_count()}", r"device='cuda:\d+': CUDA device index"
else:
    MISSING_CUDA, MISSING_CUDA_MATCH = "cuda", r"device='cuda' needs CUDA.*not available"

API_ROWS = [
    # ---- RHM(...) -----------------------------------------------------------------------------------------
    (lambda: RHM(1, 1, 2, 2), ValueError, r"\bv must be in \[2, \d+\], got 1"),
    (lambda: RHM(True, 1, 2, 2), TypeError, r"\bv must be an int"),
    (lambda: RHM(4, 0, 2, 2), ValueError, r"\bm must be >= 1, got 0"),
    (lambda: RHM(4, 1.5, 2, 2), TypeError, r"\bm must be an int"),
    (lambda: RHM(4, 1, 1, 2), ValueError, r"\bs must be >= 2, got 1"),
    (lambda: RHM(4, 1, 2, 0), ValueError, r"\bL must be in \[1, 64\], got 0"),
    (lambda: RHM(4, 1, 2, 65), ValueError, r"\bL must be in \[1, 64\], got 65"),
    (lambda: RHM(4, 1, 2, 2, n_classes=0), ValueError, r"n_classes must be in \[1, \d+\], got 0"),
    (lambda: RHM(4, 1, 2, 2, seed=-1), ValueError, r"seed must be >= 0, got -1"),
    (lambda: RHM(4, 1, 2, 2, seed=1.0), TypeError, r"seed must be an int"),
    (lambda: RHM(4, 1, 2, 2, rules="nope"), ValueError, r"rules must be one of .*got 'nope'"),
    (lambda: RHM(4, 1, 2, 2, rules=["pcsl"]), ValueError, r"rules must be one of"),
    (lambda: RHM(2, 3, 2, 1, n_classes=2), ValueError, r"n_classes \* m must be <= v\^s = 4"),
    # ---- g.sample --------------------------------------------------------------------------------------------
    (lambda: G.sample(-1), ValueError, r"\bn must be >= 0, got -1"),
    (lambda: G.sample(1.5), TypeError, r"\bn must be an int"),
    (lambda: G.sample(True), TypeError, r"\bn must be an int"),
    (lambda: G.sample(10**12), ValueError, r"n = 1000000000000 samples need \d+\.\d GiB"),
    (lambda: G.sample(10**11, return_tree=True), ValueError, r"n = 100000000000 samples need .*GiB.*the tree"),
    (lambda: G.sample(5, seed=-1), ValueError, r"seed must be in \[0, 18446744073709551615\], got -1"),
    (lambda: G.sample(5, seed=1 << 64), ValueError, r"seed must be in \[0, 18446744073709551615\]"),
    (lambda: G.sample(5, seed="1"), TypeError, r"seed must be an int"),
    (lambda: G.sample(5, start=-1), ValueError, r"start must be >= 0, got -1"),
    (lambda: G.sample(5, start=(1 << 63) - 2), ValueError, r"start \+ n must be < 2\^63"),
    (lambda: G.sample(5, start=510, mode="index"), ValueError, r"start \+ n must be <= pmax = 512, got 515"),
    (lambda: G.sample(5, mode="random"), ValueError, r"mode must be 'iid' or 'index', got 'random'"),
    (lambda: G.sample(5, device="gpu0"), ValueError, r"device must be a torch device .*got 'gpu0'"),
    (lambda: G.sample(5, device=None), ValueError, r"device must be a torch device .*got None"),
    (lambda: G.sample(5, device=MISSING_CUDA), ValueError, MISSING_CUDA_MATCH),
    (lambda: G.sample(5, dtype=torch.float32), TypeError, r"dtype must be one of"),
    # ---- g.split, g.batches, g.decode, g.table -------------------------------------------------------------
    (lambda: G.split(-1, 5), ValueError, r"n_train must be >= 0, got -1"),
    (lambda: G.split(5, 2.0), TypeError, r"n_test must be an int"),
    (lambda: G.split(300, 300), ValueError, r"n_train \+ n_test = 600 exceeds pmax = 512"),
    (lambda: G.split(5, 5, seed=-1), ValueError, r"seed must be in \[0, 18446744073709551615\], got -1"),
    (lambda: G.split(5, 5, shard=3), TypeError, r"shard must be a pair \(rank, world_size\), got 3"),
    (lambda: G.split(5, 5, shard=(2, 2)), ValueError, r"rank must be in \[0, 1\], got 2"),
    (lambda: G.split(5, 5, shard=(0, 0)), ValueError, r"world_size must be >= 1, got 0"),
    (lambda: G.split(5, 5, device="gpu0"), ValueError, r"device must be a torch device"),
    (lambda: G.split(5, 5, device=MISSING_CUDA), ValueError, MISSING_CUDA_MATCH),
    (lambda: G.batches(0), ValueError, r"batch_size must be >= 1, got 0"),
    (lambda: G.batches(4, seed=-1), ValueError, r"seed must be in \[0, 18446744073709551615\], got -1"),
    (lambda: G.batches(4, start=-1), ValueError, r"start must be >= 0, got -1"),
    (lambda: G.batches(4, device="gpu0"), ValueError, r"device must be a torch device"),
    (lambda: G.batches(4, dtype=torch.float16), TypeError, r"dtype must be one of"),
    (lambda: G.decode([512]), ValueError, r"indices must be in \[0, 511\], got 512"),
    (lambda: G.decode([0], device="gpu0"), ValueError, r"device must be a torch device"),
    (lambda: G.table("gpu0"), ValueError, r"device must be a torch device"),
    (lambda: G.table(MISSING_CUDA), ValueError, MISSING_CUDA_MATCH),
    # ---- HierarchicalCNN(v, width, s, L, n_classes) and its inputs [B, s^L = 8] --------------------------------
    (lambda: HierarchicalCNN(4, 0, 2, 3, 4), ValueError, r"width must be an int >= 1, got 0"),
    (lambda: HierarchicalCNN(True, 8, 2, 3, 4), ValueError, r"\bv must be an int >= 1, got True"),
    (lambda: HierarchicalCNN(4, 8, 2, 3.0, 4), ValueError, r"\bL must be an int >= 1, got 3.0"),
    (lambda: HierarchicalCNN(4, 8, 2, 3, 4, norm="l2"), ValueError, r"norm must be one of"),
    (lambda: HierarchicalCNN(4, 8, 2, 3, 4, activation="gelu"), ValueError, r"activation must be one of"),
    (lambda: HierarchicalCNN(4, 8, 2, 3, 4, seed=-1), ValueError, r"seed must be in \[0, \d+\], got -1"),
    (lambda: HierarchicalCNN(4, 8, 2, 3, 4, seed=1.5), TypeError, r"seed must be an int"),
    (lambda: HierarchicalCNN(4, 8, 2, 3, 4)(tokens(16)), ValueError, r"shape \[B, s\^L=8\], got \[2, 16\]"),
    (lambda: HierarchicalCNN(4, 8, 2, 3, 4)(tokens(24)), ValueError, r"shape \[B, s\^L=8\], got \[2, 24\]"),
    (lambda: HierarchicalCNN(4, 8, 2, 3, 4)(tokens(10)), ValueError, r"shape \[B, s\^L=8\], got \[2, 10\]"),
    (lambda: HierarchicalCNN(4, 8, 2, 3, 4)(torch.zeros(8, dtype=torch.long)), ValueError,
     r"HierarchicalCNN expects token ids of shape \[B, s\^L=8\], got \[8\]"),
    (lambda: HierarchicalCNN(4, 8, 2, 3, 4)(tokens(value=4)), ValueError, r"\[0, vocab_size=4\), got 4"),
    (lambda: HierarchicalCNN(4, 8, 2, 3, 4)(tokens(value=-1)), ValueError, r"\[0, vocab_size=4\), got -1"),
    (lambda: HierarchicalCNN(4, 8, 2, 3, 4)(tokens(dtype=torch.float32)), TypeError,
     r"HierarchicalCNN expects integer token ids .*got dtype torch.float32"),
    (lambda: HierarchicalCNN(4, 8, 2, 3, 4).layer(1, tokens(16)), ValueError, r"s\^L=8\], got \[2, 16\]"),
    (lambda: HierarchicalCNN(4, 8, 2, 3, 4).layer(0, tokens()), ValueError, r"\bl must be in \[1, 3\], got 0"),
    (lambda: HierarchicalCNN(4, 8, 2, 3, 4).layer_outputs(tokens(), depth=4), ValueError,
     r"depth must be in \[1, 3\], got 4"),
    # ---- FullyConnected(v, d, width, depth, n_classes) and its inputs [B, d = 8] -----------------------------
    (lambda: FullyConnected(4, 8, 16, 0, 4), ValueError, r"depth must be an int >= 1, got 0"),
    (lambda: FullyConnected(4, 8.0, 16, 1, 4), ValueError, r"\bd must be an int >= 1, got 8.0"),
    (lambda: FullyConnected(4, 8, 16, 1, 4, seed=True), TypeError, r"seed must be an int"),
    (lambda: FullyConnected(4, 8, 16, 1, 4)(tokens(16)), ValueError, r"shape \[B, d=8\], got \[2, 16\]"),
    (lambda: FullyConnected(4, 8, 16, 1, 4)(tokens(value=4)), ValueError, r"ids in \[0, v=4\), got 4"),
    (lambda: FullyConnected(4, 8, 16, 1, 4)(tokens(value=-3)), ValueError, r"ids in \[0, v=4\), got -3"),
    (lambda: FullyConnected(4, 8, 16, 1, 4)(tokens(dtype=torch.float32)), TypeError, r"got dtype torch.float32"),
    (lambda: FullyConnected(4, 8, 16, 1, 4)(tokens(dtype=torch.bool)), TypeError, r"got dtype torch.bool"),
    (lambda: FullyConnected(4, 8, 16, 1, 4)([[0] * 8]), TypeError, r"integer tensor \[B, d=8\], got list"),
    # ---- RenLayerwiseLearner(v, s, L) and its inputs [B, s^L = 8] ---------------------------------------------
    (lambda: RenLayerwiseLearner(4, 2, 3, n_features=0), ValueError, r"n_features must be an int >= 1, got 0"),
    (lambda: RenLayerwiseLearner(4, 2, 3, n_classes=False), ValueError, r"n_classes must be an int >= 1"),
    (lambda: RenLayerwiseLearner(4, 2, 3, features="fourier"), ValueError, r"features must be one of"),
    (lambda: RenLayerwiseLearner(4, 2, 3, sigma="wide"), ValueError, r"sigma must be"),
    (lambda: RenLayerwiseLearner(4, 2, 3, sigma=[1.0, True, 1.0]), ValueError, r"sigma must be"),
    (lambda: RenLayerwiseLearner(4, 2, 3, sigma_eps=1.5), ValueError, r"sigma_eps must be in \(0, 1\), got 1.5"),
    (lambda: RenLayerwiseLearner(4, 2, 3, sigma_eps="0.1"), TypeError, r"sigma_eps must be a real number"),
    (lambda: RenLayerwiseLearner(4, 2, 3, eps=0.0), ValueError, r"eps must be > 0, got 0.0"),
    (lambda: RenLayerwiseLearner(4, 2, 3, eps=True), TypeError, r"\beps must be a real number"),
    (lambda: RenLayerwiseLearner(4, 2, 3, seed=-2), ValueError, r"seed must be in \[0, \d+\], got -2"),
    (lambda: RenLayerwiseLearner(4, 2, 3)(tokens(16)), ValueError, r"shape \[B, s\^L=8\], got \[2, 16\]"),
    (lambda: RenLayerwiseLearner(4, 2, 3)(tokens(10)), ValueError, r"shape \[B, s\^L=8\], got \[2, 10\]"),
    (lambda: RenLayerwiseLearner(4, 2, 3)(tokens(value=4)), ValueError, r"ids in \[0, v=4\), got 4"),
    (lambda: RenLayerwiseLearner(4, 2, 3)(tokens(dtype=torch.float64)), TypeError, r"got dtype torch.float64"),
    (lambda: RenLayerwiseLearner(4, 2, 3).embeddings(tokens(), down_to=4), ValueError,
     r"down_to must be in \[0, 3\], got 4"),
    (lambda: RenLayerwiseLearner(4, 2, 3).embeddings(tokens(3), down_to=2), ValueError,
     r"T a positive multiple of s\^\(L-down_to\)=2, got \[2, 3\]"),
    (lambda: RenLayerwiseLearner(4, 2, 3).embeddings(tokens(4, value=9), down_to=1), ValueError,
     r"ids in \[0, v=4\), got 9"),
    # ---- rhmfast.nn -------------------------------------------------------------------------------------------
    (lambda: PatchConv1d(4, 4, True), ValueError, r"patch_size must be an int >= 1, got True"),
    (lambda: PatchConv1d(4, 4, 2.0), ValueError, r"patch_size must be an int >= 1, got 2.0"),
    (lambda: PatchConv1d(0, 4, 2), ValueError, r"in_channels must be an int >= 1, got 0"),
    (lambda: PatchConv1d(4, False, 2), ValueError, r"out_channels must be an int >= 1, got False"),
    (lambda: PatchConv1d(4, 4, 2, layout="nhwc"), ValueError, r"layout must be"),
    (lambda: PatchConv1d(4, 4, 2, activation="tanh"), ValueError, r"activation must be one of"),
    (lambda: PatchConv1d(4, 4, 2, scale="2"), TypeError, r"scale must be a real number, got str"),
    (lambda: PatchConv1d(4, 4, 2, scale=True), TypeError, r"scale must be a real number, got bool"),
    (lambda: PatchConv1d(4, 4, 2, scale=math.inf), ValueError, r"scale must be a finite number, got inf"),
    (lambda: TokenPatchEmbedding(4, 4, True), ValueError, r"patch_size must be an int >= 1, got True"),
    (lambda: TokenPatchEmbedding(True, 4, 2), ValueError, r"vocab_size must be an int >= 1, got True"),
    (lambda: TokenPatchEmbedding(4, 0, 2), ValueError, r"out_channels must be an int >= 1, got 0"),
    (lambda: TokenPatchEmbedding(4, 4, 2, scale=math.nan), ValueError, r"scale must be a finite number"),
]


@pytest.mark.parametrize("call,error,match", API_ROWS,
                         ids=[f"{i}-{e.__name__}" for i, (_, e, _) in enumerate(API_ROWS)])
def test_bad_arguments_are_refused_naming_the_parameter(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---- grammar files ----------------------------------------------------------------------------------------------

def _set(*keys_and_value):
    """A mutator setting record[k1][k2]... = value."""
    *keys, value = keys_and_value

    def change(record):
        target = record
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return change


def _pop(key):
    return lambda record: record.pop(key)


def _ambiguous(level):
    def change(record):  # the first rule of symbol 1 becomes the first rule of symbol 0
        record["rules"][level][1][0] = list(record["rules"][level][0][0])
    return change


def _drop_parent_2023(record):  # level 1 loses its last parent and that parent's rules
    record["parents"][1].pop()
    record["rules"][1].pop()


def _extra_parent_2023(record):  # level 1 gains a parent that no rule of level 0 produces
    used = set(record["parents"][1])
    missing = min(set(range(record["v"])) - used)
    record["parents"][1] = sorted(used | {missing})
    position = record["parents"][1].index(missing)
    taken = {tuple(rule) for rules in record["rules"][1] for rule in rules}
    free = [[a, b] for a in range(record["v"]) for b in range(record["v"]) if (a, b) not in taken]
    record["rules"][1].insert(position, free[:record["m"]])


def _break_first_tokens(record):  # one rule of level 0 starts with another symbol, the level stays unambiguous
    rules = record["rules"][0]
    taken = {tuple(rule) for row in rules for rule in row}
    first = rules[0][0]
    for a in range(record["v"]):
        if a != first[0] and (a, *first[1:]) not in taken:
            first[0] = a
            return
    raise AssertionError("no free first token")


# (sampler, change, regex naming the field; the file's path is checked for every row)
FILE_ROWS = [
    # the defects of the hostile tryout
    ("pcsl", _ambiguous(1), (r"field 'rules\[1\]' is ambiguous: the s-tuple \(\d+, \d+\) is the rule of symbol 0 "
                             r"\(rule 0\) and of symbol 1 \(rule 0\)")),
    ("pcsl", _ambiguous(0), r"field 'rules\[0\]' is ambiguous"),
    ("pcsl", _set("rules", 2, 0, 0, 0, 7), r"field 'rules\[2\]' entries must be in \[0, v-1 = 3\], got 7"),
    ("pcsl", _set("rules", 2, 0, 0, 0, 2**40),
     r"field 'rules\[2\]' entries must be in \[0, v-1 = 3\], got 1099511627776"),
    ("pcsl", _set("rules", 1, 0, 0, 0, -1), r"field 'rules\[1\]' entries must be in \[0, v-1 = 3\], got -1"),
    ("pcsl", _set("rules", 2, 0, 0, 0, 1.5), r"field 'rules\[2\]' must hold ints \(no bools, no floats\), got 1.5"),
    ("pcsl", _set("rules", 2, 0, 0, 0, 1.0), r"field 'rules\[2\]' must hold ints .*got 1.0"),
    ("pcsl", _set("rules", 2, 0, 0, 0, True), r"field 'rules\[2\]' must hold ints .*got True \(a bool\)"),
    ("pcsl", _set("parents", 1, 0, False), r"field 'parents\[1\]' must hold ints .*got False \(a bool\)"),
    ("pcsl", _set("v", 5), r"field 'parents\[1\]' must be the symbols 0 \.\. v-1 = 4 \(sampler 'pcsl'\)"),
    ("pcsl", _set("v", 3), r"field 'rules\[0\]' entries must be in \[0, v-1 = 2\], got 3"),
    ("pcsl", _set("n_classes", 3), r"field 'parents\[0\]' entries must be in \[0, n_classes-1 = 2\], got 3"),
    ("pcsl", _set("n_classes", 5), r"field 'parents\[0\]' must be the labels 0 \.\. n_classes-1 = 4"),
    ("pcsl", _set("rules_sampler", "pcsl-2024"), r"field 'rules_sampler' must be one of .*got 'pcsl-2024'"),
    ("pcsl", _set("rules_sampler", None), r"field 'rules_sampler' must be one of .*got None"),
    # parameters: missing, wrong type, out of range, disagreeing with the tables
    ("pcsl", _pop("v"), r"field 'v' is missing"),
    ("pcsl", _pop("rules_sampler"), r"field 'rules_sampler' is missing"),
    ("pcsl", _pop("rules"), r"field 'rules' is missing"),
    ("pcsl", _set("v", 4.0), r"field 'v' must be an int, got float \(4.0\)"),
    ("pcsl", _set("m", True), r"field 'm' must be an int, got bool \(True\)"),
    ("pcsl", _set("s", "2"), r"field 's' must be an int, got str"),
    ("pcsl", _set("L", 0), r"field 'L' must be in \[1, 64\], got 0"),
    ("pcsl", _set("L", 2), r"field 'parents' must be a list of L = 2 levels, found 3"),
    ("pcsl", _set("n_classes", None), r"field 'n_classes' must be an int, got NoneType"),
    ("pcsl", _set("seed", -1), r"field 'seed' must be >= 0, got -1"),
    ("pcsl", _set("m", 3), (r"field 'rules\[0\]' must have shape \[len\(parents\[0\]\) = 4, m = 3, s = 2\], "
                            r"got a list of length 2 at depth 1")),
    ("pcsl", _set("s", 3), r"field 'rules\[0\]' must have shape \[.*s = 3\], got a list of length 2 at depth 2"),
    # the tables' structure
    ("pcsl", _set("parents", {"0": [0]}), r"field 'parents' must be a list of L = 3 levels, found a dict"),
    ("pcsl", _set("rules", 0, "x"), r"field 'rules\[0\]' must be a nested list of shape .*got 'x' \(a str\)"),
    ("pcsl", _set("rules", 0, 0, []), r"field 'rules\[0\]' must have shape .*got a list of length 0 at depth 1"),
    ("pcsl", _set("parents", 1, []), r"field 'parents\[1\]' must not be empty"),
    ("pcsl", _set("parents", 1, [0, 1, 2, 2]), r"field 'parents\[1\]' must be the symbols 0 \.\. v-1 = 3"),
    ("pcsl", _set("parents", 0, [1, 0, 2, 3]), r"field 'parents\[0\]' must be the labels"),
    ("pcsl-2023", _drop_parent_2023, r"field 'parents\[1\]' must be the symbols occurring in rules\[0\]"),
    ("pcsl-2023", _extra_parent_2023, r"field 'parents\[1\]' must be the symbols occurring in rules\[0\]"),
    ("pcsl-2023", _ambiguous(1), r"field 'rules\[1\]' is ambiguous"),
    ("first-token-uniform", _set("n_classes", 3),
     r"field 'n_classes' must equal v = 4 for rules_sampler 'first-token-uniform', got 3"),
    ("first-token-uniform", _break_first_tokens, r"field 'rules\[0\]' must start every symbol exactly m = 2 times"),
    # the envelope
    ("pcsl", _set("format", "rhmfast.Other"), r"is not an rhmfast grammar file \(format 'rhmfast.Other'\)"),
    ("pcsl", _set("version", True), r"unsupported grammar format version True"),
    ("pcsl", _set("version", 1.0), r"unsupported grammar format version 1.0"),
]

GRAMMARS = {"pcsl": dict(v=4, m=2, s=2, L=3), "pcsl-2023": dict(v=8, m=2, s=2, L=2),
            "first-token-uniform": dict(v=4, m=2, s=2, L=2)}


def _saved(sampler, tmp_path):
    path = tmp_path / "grammar.json"
    RHM(**GRAMMARS[sampler], seed=0, rules=sampler).save(path)
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("sampler,change,match", FILE_ROWS, ids=[f"{i}-{row[0]}" for i, row in enumerate(FILE_ROWS)])
def test_a_corrupted_grammar_file_is_refused_naming_the_file_and_the_field(sampler, change, match, tmp_path):
    path, record = _saved(sampler, tmp_path)
    RHM.load(path)  # valid before the change
    change(record)
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=match) as caught:
        RHM.load(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("text,match", [
    ("{not json", r"is not valid JSON"),
    ("", r"is not valid JSON"),
    (b"\xff\xfe{}", r"is not valid JSON"),
    ("[1, 2]", r"must hold a JSON object, got list"),
    ('{"format": "rhmfast.RHM", "version": 1, "v": NaN}', r"field 'v' must be an int, got float"),
])
def test_an_unreadable_grammar_file_is_refused_naming_the_file(text, match, tmp_path):
    path = tmp_path / "grammar.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=match) as caught:
        RHM.load(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_round_trips_bit_identically(sampler, tmp_path):
    """The checks accept every valid saved grammar, pcsl-2023 levels with fewer than v parents included."""
    grammars = [RHM(**GRAMMARS[sampler], seed=seed, rules=sampler) for seed in range(3)]
    grammars.append(RHM(5, 3, 3, 2, n_classes=5 if sampler == "first-token-uniform" else 2, seed=4, rules=sampler))
    if sampler == "pcsl-2023":
        assert any(p.numel() < g.v for g in grammars for p in g.parents[1:])
    for g in grammars:
        path = tmp_path / "g.json"
        g.save(path)
        h = RHM.load(path)
        assert repr(h) == repr(g) and h.pmax == g.pmax
        assert all(torch.equal(a, b) for a, b in zip(g.rules + g.parents, h.rules + h.parents))
        assert torch.equal(g.table(), h.table())
        for mode in ("iid", "index"):
            n = min(64, g.pmax)
            x, y, tree = g.sample(n, seed=5, mode=mode, return_tree=True)
            x2, y2, tree2 = h.sample(n, seed=5, mode=mode, return_tree=True)
            assert torch.equal(x, x2) and torch.equal(y, y2)
            assert all(torch.equal(a, b) for a, b in zip(tree, tree2))


# ---- the input checks under torch.compile ----------------------------------------------------------------------

@pytest.mark.parametrize("build", [lambda: FullyConnected(4, 8, 16, 1, 4, seed=0),
                                   lambda: RenLayerwiseLearner(4, 2, 3, seed=0),
                                   lambda: HierarchicalCNN(4, 8, 2, 3, 4, seed=0)],
                         ids=["fc", "ren", "hcnn"])
def test_the_input_checks_compile_with_fullgraph(build):
    torch._dynamo.reset()
    model = build()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(X), model(X))
