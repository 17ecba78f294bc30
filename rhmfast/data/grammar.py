"""``rhmfast.RHM``: a Random Hierarchy Model grammar and its samplers (Cagnetta et al. 2024)."""
from __future__ import annotations

import json
import math
import numbers
import os
import random
import warnings
from typing import Iterator

import torch

from rhmfast._checks import check_device, check_int, check_seed
from rhmfast.data import rule_samplers, variants
from rhmfast.data.exact import ExactStatistics
from rhmfast.ops.rhm_sample import rhm_decode, rhm_sample
from rhmfast.reference import rhm_sample as sample_ref

FORMAT_NAME = "rhmfast.RHM"
FORMAT_VERSION = 1
_INT64_LIMIT = 1 << 63
_MAX_SYMBOLS = (1 << 31) - 1  # the kernels' rule table is int32: symbols and labels must fit it
_GIB = float(1 << 30)
_TOKEN_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)
SPLIT_ORDERS = ("rhmfast", "pcsl")  # split(order=...): rhmfast's own draw, or the 2024 library's
_PCSL_REPLACEMENT_ABOVE = 10**19  # the library samples with replacement when max_data > 1e19


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The part ``[lo, hi)`` of ``range(n)`` that rank ``rank`` of ``world_size`` holds: contiguous, in rank
    order, sizes differing by at most one; the parts of all ranks are disjoint and cover ``range(n)``."""
    n = check_int("n", n, 0)
    world_size = check_int("world_size", world_size, 1)
    rank = check_int("rank", rank, 0, world_size - 1)
    return n * rank // world_size, n * (rank + 1) // world_size


def find_assumption_seed(v: int, m: int, s: int, L: int, n_classes: int | None = None, *, rules: str = "pcsl",
                         start: int = 0, max_seeds: int = 1000) -> int | None:
    """The first rules seed in [start, start + max_seeds) whose grammar satisfies Ren et al.'s Assumption 6
    (``exact.satisfies_assumption()``), or None if there is none."""
    start = check_int("start", start, 0)
    max_seeds = check_int("max_seeds", max_seeds, 1)
    for seed in range(start, start + max_seeds):
        if RHM(v, m, s, L, n_classes, seed=seed, rules=rules).exact.satisfies_assumption():
            return seed
    return None


class RHM:
    """A Random Hierarchy Model: a random, unambiguous context-free grammar on a fixed s-ary tree.

    Parameters
    ----------
    v : vocabulary size of every level below the root (>= 2).
    m : multiplicity, the number of rules of every symbol (>= 1).
    s : patch size / branching factor (>= 2).
    L : depth (>= 1); an input has s**L tokens.
    n_classes : number of labels (root symbols); default v.
    seed : seed of the rule sampler.
    rules : the rule sampler, ``"pcsl"`` (default), ``"pcsl-2023"`` or ``"first-token-uniform"``.
    production : ``"uniform"`` (default: every rule of a symbol equally likely) or ``"zipf"``: at the levels
        ``zipf_levels`` (None: every level 0 .. L-1) rule i of a symbol (i = 0 .. m-1, in the order of
        ``rules``) has probability ∝ (i + 1)^-(1 + a), a = ``zipf_exponent`` (a real number >= 0, or math.inf:
        always rule 0); the label stays uniform (Cagnetta, Kang & Wyart 2025; ``rhmfast.data.variants``).
    sparsity : s0 >= 0; s0 > 0 makes the sparse RHM (Tomasini & Wyart 2024): every child sits in one of s0 + 1
        slots of its own block, uniformly at random, the other slots holding the blank token v; inputs have
        (s(s0+1))^L tokens in [0, v]. Zipf productions and sparsity combine.

    Attributes: ``v, m, s, L, n_classes, seed, sampler``; ``rules`` (list of L int64 tensors, level 0
    first, [n_parents, m, s]); ``parents`` (the symbol of each row of ``rules[l]``: all symbols except
    for pcsl-2023, where only the symbols occurring in the level above own rules); ``production``,
    ``zipf_exponent`` (None for uniform productions), ``zipf_levels`` (None: every level), ``sparsity``;
    ``input_dim`` (tokens of an input: s**L, or (s(s0+1))**L when sparse); ``input_vocab`` (token ids a
    model must embed: v, or v + 1 when sparse); ``patch_size`` (s, or s(s0+1) when sparse); ``blank`` (v when
    sparse, else None); ``pmax`` (the number of distinct dense inputs, an exact Python int: the domain of
    index mode and decode; a sparse grammar has pmax * (s0+1)^(number of non-root nodes) distinct inputs);
    ``exact`` (exact statistics).

    The rules do not depend on production or sparsity: the variants of a grammar share its rules.
    """

    def __init__(self, v: int, m: int, s: int, L: int, n_classes: int | None = None, seed: int = 0,
                 rules: str = "pcsl", *, production: str = "uniform", zipf_exponent: float | None = None,
                 zipf_levels=None, sparsity: int = 0):
        v = check_int("v", v, 2, _MAX_SYMBOLS)
        m = check_int("m", m, 1)
        s = check_int("s", s, 2)
        L = check_int("L", L, 1, 64)
        n_classes = v if n_classes is None else check_int("n_classes", n_classes, 1, _MAX_SYMBOLS)
        seed = check_int("seed", seed, 0)
        if not isinstance(rules, str) or rules not in rule_samplers.SAMPLERS:
            raise ValueError(f"rules must be one of {sorted(rule_samplers.SAMPLERS)}, got {rules!r}")
        production = variants.check_production(production)
        zipf_exponent = variants.check_zipf_exponent(zipf_exponent, production)
        zipf_levels = variants.check_zipf_levels(zipf_levels, L, production)
        sparsity = variants.check_sparsity(sparsity)
        if n_classes * m > v**s:
            raise ValueError(f"n_classes * m must be <= v^s = {v**s} (each label needs m distinct s-tuples), "
                             f"got n_classes * m = {n_classes * m}")
        if L > 1 and rules != "pcsl-2023" and m > v ** (s - 1):
            raise ValueError(f"m must be <= v^(s-1) = {v ** (s - 1)} so that v*m distinct s-tuples exist, got m = {m}")
        if rules == "first-token-uniform":
            if n_classes != v:
                raise ValueError(f"rules='first-token-uniform' needs n_classes == v = {v}, got n_classes = {n_classes}")
            if m > v ** (s - 1):
                raise ValueError(f"rules='first-token-uniform' needs m <= v^(s-1) = {v ** (s - 1)}, got m = {m}")
        levels = rule_samplers.SAMPLERS[rules](v, n_classes, m, s, L, seed)
        self._init(v, m, s, L, n_classes, seed, rules, [p for p, _ in levels], [r for _, r in levels],
                   production, zipf_exponent, zipf_levels, sparsity)

    def _init(self, v, m, s, L, n_classes, seed, sampler, parents, rules, production="uniform", zipf_exponent=None,
              zipf_levels=None, sparsity=0):
        self.v, self.m, self.s, self.L, self.n_classes = v, m, s, L, n_classes
        self.seed, self.sampler = seed, sampler
        self.parents = [p.to(torch.int64) for p in parents]
        self.rules = [r.to(torch.int64) for r in rules]
        self.production, self.zipf_exponent, self.zipf_levels = production, zipf_exponent, zipf_levels
        self.sparsity = sparsity
        self.blank = v if sparsity else None
        self.input_vocab = v + 1 if sparsity else v
        self.patch_size = s * (sparsity + 1)
        self.input_dim = self.patch_size**L
        self.pmax = n_classes * sample_ref.per_class_count(m, s, L)
        self._rule_probs = {}  # per device; empty for uniform productions
        self._dense = None  # the dense grammar of a sparse one (same rules and productions), made when needed
        # Kernel table: int32 [L, R, m, s], rows indexed by symbol id (rows of symbols without rules stay 0
        # and are never read).
        table = torch.zeros(L, max(v, n_classes), m, s, dtype=torch.int32)
        for level, (p, r) in enumerate(zip(self.parents, self.rules)):
            table[level, p] = r.to(torch.int32)
        self._tables = {torch.device("cpu"): table}
        self.exact = ExactStatistics(self)

    def __repr__(self) -> str:
        options = ""
        if self.production != "uniform":
            exponent = "math.inf" if math.isinf(self.zipf_exponent) else repr(self.zipf_exponent)
            options += f", production={self.production!r}, zipf_exponent={exponent}"
            if self.zipf_levels is not None:
                options += f", zipf_levels={self.zipf_levels!r}"
        if self.sparsity:
            options += f", sparsity={self.sparsity}"
        return (f"RHM(v={self.v}, m={self.m}, s={self.s}, L={self.L}, n_classes={self.n_classes}, "
                f"seed={self.seed}, rules={self.sampler!r}{options})")

    @staticmethod
    def _device(device) -> torch.device:
        """The device argument of the samplers, checked (it exists here), CUDA without an index resolved to the
        current device."""
        device = check_device("device", device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return device

    def table(self, device="cpu") -> torch.Tensor:
        """The int32 [L, R, m, s] rule table the kernels read, on ``device`` (cached)."""
        device = self._device(device)
        if device not in self._tables:
            self._tables[device] = self._tables[torch.device("cpu")].to(device)
        return self._tables[device]

    def rule_probs(self, device="cpu") -> torch.Tensor | None:
        """The probability of every rule of every symbol at every level, float64 [L, R, m] (R = the rows of
        ``table()``; rows of symbols that own no rules are zero) on ``device`` (cached), or None for uniform
        productions."""
        if self.production == "uniform":
            return None
        device = self._device(device)
        cpu = torch.device("cpu")
        if cpu not in self._rule_probs:
            probs = torch.zeros(self.table().shape[:3], dtype=torch.float64)
            for level, (parents, law) in enumerate(zip(self.parents, variants.level_probabilities(self))):
                probs[level, parents] = law
            self._rule_probs[cpu] = probs
        if device not in self._rule_probs:
            self._rule_probs[device] = self._rule_probs[cpu].to(device)
        return self._rule_probs[device]

    def dense_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The dense strings [B, s^L] of inputs [B, input_dim] (tokens' dtype): for a sparse grammar their
        non-blank tokens in order, after checking that every string is well-formed (ids in [0, v], exactly one
        informative token in each child's block of s0 + 1 slots below an informative position, only blanks
        below a blank: a ValueError names the first sample and patch that is not); a dense grammar's inputs
        are returned as they are, once their shape and ids are checked."""
        return variants.dense_strings(self, tokens, self.L)

    def _dense_grammar(self) -> "RHM":
        """This grammar without sparsity (the same rules and productions): the law of the dense strings."""
        if not self.sparsity:
            return self
        if self._dense is None:
            self._dense = RHM.__new__(RHM)
            self._dense._init(self.v, self.m, self.s, self.L, self.n_classes, self.seed, self.sampler, self.parents,
                              self.rules, self.production, self.zipf_exponent, self.zipf_levels)
        return self._dense

    def _dtype(self, dtype, return_tree: bool) -> torch.dtype:
        top = max(self.input_vocab, self.n_classes if return_tree else 0) - 1
        if dtype is None:
            for candidate in _TOKEN_DTYPES:
                if top <= torch.iinfo(candidate).max:
                    return candidate
        if dtype not in _TOKEN_DTYPES:
            raise TypeError(f"dtype must be one of uint8, int16, int32, int64, got {dtype}")
        if top > torch.iinfo(dtype).max:
            what = "symbols and labels" if return_tree else "tokens"
            raise ValueError(f"dtype {dtype} cannot hold {what} up to {top} (max {torch.iinfo(dtype).max})")
        return dtype

    def _check_memory(self, n: int, device: torch.device, dtype: torch.dtype, return_tree: bool) -> None:
        """Refuses up front (ValueError naming n and the GiB needed) a draw whose output alone exceeds the
        memory of the device: the physical memory for the CPU, the GPU's total memory for CUDA."""
        per_sample = self.input_dim * dtype.itemsize + 8  # tokens, and the int64 label
        if return_tree:
            per_sample += (self.input_dim - 1) // (self.patch_size - 1) * dtype.itemsize  # levels 0 .. L-1
        need = n * per_sample
        if device.type == "cpu":
            try:
                cap = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (AttributeError, OSError, ValueError):  # no sysconf (Windows): no cap
                return
        elif device.type == "cuda":
            cap = torch.cuda.get_device_properties(device).total_memory
        else:
            return
        if need > cap:
            raise ValueError(f"rhmfast: n = {n} samples need {need / _GIB:.1f} GiB ({per_sample} bytes each: "
                             f"{self.input_dim} tokens of {dtype}, the label{', the tree' if return_tree else ''}), "
                             f"more than the {cap / _GIB:.1f} GiB of memory of {device}; draw fewer at a time "
                             "(batches(), or sample() with start=)")

    @staticmethod
    def _result(tokens, labels, tree, return_tree):
        return (tokens, labels, [*tree, tokens]) if return_tree else (tokens, labels)

    # ---- sampling ------------------------------------------------------------------------------

    def sample(self, n: int, *, seed: int = 0, start: int = 0, mode: str = "iid", device="cpu",
               dtype: torch.dtype | None = None, return_tree: bool = False):
        """Draw samples ``start .. start+n-1`` of the stream ``(seed, mode)``.

        Returns ``(tokens [n, input_dim], labels [n] int64)``, and with ``return_tree=True`` also the latent
        tree: a list of L+1 tensors, level l of shape [n, s^l] (level 0 the label, level L the tokens).
        Sample number i depends only on (grammar, seed, mode, i): never on n, chunking, threads, backend
        or device. ``mode="iid"``: uniform label and rule choices (Zipf productions: the label uniform, the
        rules drawn with their probabilities, see ``rhmfast.data.variants``). ``mode="index"``: sample i is
        datum number pi(i) for a keyed pseudo-random permutation pi of [0, pmax) -- exact sampling without
        replacement (needs pmax < 2^63; disjoint ranges of i give disjoint sets); uniform productions only.

        A sparse grammar draws the dense sample of either mode, then the slots of its nodes from their own
        counters (so index mode keeps disjoint ranges disjoint); its tree is the tree of sparse strings:
        level l of shape [n, (s(s0+1))^l], the level-l symbols in their slots and blanks (v) elsewhere, level
        L the tokens (``dense_tokens`` gives back the dense strings, the slots are where the non-blanks are).
        """
        n = check_int("n", n, 0)
        start = check_int("start", start, 0)
        seed = check_seed("seed", seed, optional=False)
        self._check_mode(mode)
        device = self._device(device)
        if start + n >= _INT64_LIMIT:
            raise ValueError(f"start + n must be < 2^63, got {start + n}")
        if mode == "index":
            if self.pmax >= _INT64_LIMIT:
                raise ValueError(f"mode='index' needs pmax < 2^63, this grammar has pmax = {self.pmax}; use mode='iid'")
            if start + n > self.pmax:
                raise ValueError(f"mode='index' draws without replacement: start + n must be <= pmax = {self.pmax}, "
                                 f"got {start + n}")
        dtype = self._dtype(dtype, return_tree)
        self._check_memory(n, device, dtype, return_tree)
        if self.production == "uniform" and not self.sparsity:
            out = rhm_sample(self.table(device), self.n_classes, n, seed, start, mode, dtype, return_tree)
        else:
            out = variants.sample(self, n, seed, start, mode, device, dtype, return_tree)
        return self._result(*out, return_tree)

    def _check_mode(self, mode) -> None:
        if not isinstance(mode, str) or mode not in ("iid", "index"):
            raise ValueError(f"mode must be 'iid' or 'index', got {mode!r}")
        if mode == "index" and self.production == "zipf":
            raise ValueError("rhmfast: Zipf productions are not uniform: mode='index' (a permutation of equally "
                             "likely data) cannot sample them; use mode='iid'")

    def decode(self, indices, *, device="cpu", dtype: torch.dtype | None = None, return_tree: bool = False):
        """Datum numbers in [0, pmax) (an int, a sequence of ints, or an int64 tensor) to samples, with the
        reference codes' convention: label = i // (pmax / n_classes), then the remainder's base-m digits,
        root first and then each level's nodes, are the rule choices. Python ints of any size are
        accepted (pmax may exceed 2^64). With Zipf productions the data are those of the rule table, but
        decoding uniform datum numbers is not drawing from the grammar's law. A sparse grammar refuses:
        its inputs also hold the slots of their nodes, which no datum number names (use ``sample``)."""
        if self.sparsity:
            raise ValueError(f"rhmfast: decode() maps datum numbers to dense strings; the inputs of this sparse "
                             f"grammar (sparsity = {self.sparsity}) also hold random slots: use sample()")
        dtype = self._dtype(dtype, return_tree)
        device = self._device(device)
        if isinstance(indices, torch.Tensor):
            if indices.dtype != torch.int64:
                raise TypeError(f"indices must be an int64 tensor, got {indices.dtype}")
            self._check_memory(indices.numel(), device, dtype, return_tree)
            datum = indices.reshape(-1).to(device)
        else:
            values = [indices] if isinstance(indices, numbers.Integral) else list(indices)
            # numpy integers too (bools stay, for _check_int to refuse)
            values = [int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v for v in values]
            for value in values:
                check_int("indices", value, 0, self.pmax - 1)
            self._check_memory(len(values), device, dtype, return_tree)
            if self.pmax >= _INT64_LIMIT:
                return self._decode_big(values, device, dtype, return_tree)
            datum = torch.tensor(values, dtype=torch.int64, device=device)
        if self.pmax >= _INT64_LIMIT:
            raise ValueError(f"pmax = {self.pmax} does not fit int64: pass the datum numbers as Python ints")
        out = rhm_decode(self.table(device), datum, self.n_classes, dtype, return_tree)
        return self._result(*out, return_tree)

    def _decode_big(self, values, device, dtype, return_tree):
        """Decoding with exact Python integers, for grammars whose pmax exceeds int64."""
        per_class = self.pmax // self.n_classes
        n_internal = sample_ref.n_internal_nodes(self.s, self.L)
        labels, choices = [], []
        for value in values:
            label, rest = divmod(value, per_class)
            digits = [0] * n_internal
            for t in range(n_internal - 1, -1, -1):
                rest, digits[t] = divmod(rest, self.m)
            labels.append(label)
            choices.append(digits)
        out = sample_ref.expand(self.table(device), torch.tensor(labels, dtype=torch.int64, device=device),
                                torch.tensor(choices, dtype=torch.int64, device=device).reshape(len(values), n_internal),
                                dtype, return_tree)
        return self._result(*out, return_tree)

    def split(self, n_train: int, n_test: int, seed: int = 0, *, order: str = "rhmfast", replacement: bool = False,
              shard: tuple[int, int] = (0, 1), device="cpu", dtype: torch.dtype | None = None,
              return_tree: bool = False):
        """Training and test sets: ``((x_train, y_train), (x_test, y_test))``.

        ``order="rhmfast"`` (default): exact sampling without replacement (index mode, disjoint index
        ranges) when pmax < 2^63; beyond that, iid draws: any repeat then has probability below
        (n_train + n_test)^2 / pmax, which is below 2^-63 (n_train + n_test)^2. The training set is
        samples [0, n_train) of that stream, the test set samples [n_train, n_train + n_test).
        ``replacement=True``: the iid stream (``sample(mode="iid")``), so samples may repeat.

        ``order="pcsl"``: the sets the 2024 pcsl-epfl random-hierarchy-model library draws for
        ``seed_sample=seed`` (with this grammar's rules, e.g. ``rules="pcsl"`` and the same rules seed),
        bit for bit: without replacement, the datum numbers ``random.Random(seed).sample(range(pmax),
        n_train + n_test)`` (the library seeds Python's global ``random`` the same way; it is left alone
        here), decoded (``decode``), the first n_train the training set; this needs pmax < 2^63 (the library's
        ``random.sample`` fails beyond). ``replacement=True``, or pmax > 10^19 (where the library switches
        to it by itself, with a warning; so does this): a ``torch.Generator`` seeded with ``seed`` draws the
        n_train + n_test labels (``torch.randint``), then level by level the rule of every node, as the
        library does; on the CPU, whatever ``device`` (the stream is the CPU generator's), then moved.

        ``shard=(rank, world_size)`` returns only that rank's contiguous part of each set (its
        ``shard_range`` of the training and of the test samples); for order "rhmfast" it generates nothing
        else. The parts of ranks 0 .. world_size-1, concatenated, are the unsharded sets.

        Zipf productions have no index mode: they need ``replacement=True`` (iid draws from the grammar's law,
        so the training and test sets may share samples, the more so the larger zipf_exponent), and
        ``replacement=False`` is refused rather than silently switched. A sparse grammar splits its dense
        samples as above (disjoint without replacement), each with its own slots. ``order="pcsl"`` refuses
        both variants: the library it reproduces has neither.
        """
        n_train = check_int("n_train", n_train, 0)
        n_test = check_int("n_test", n_test, 0)
        seed = check_seed("seed", seed, optional=False)
        if not isinstance(order, str) or order not in SPLIT_ORDERS:
            raise ValueError(f"rhmfast: order must be one of {SPLIT_ORDERS}, got {order!r}")
        if not isinstance(replacement, bool):
            raise TypeError(f"rhmfast: replacement must be a bool, got {type(replacement).__name__}")
        if order == "pcsl" and (self.production != "uniform" or self.sparsity):
            raise ValueError("rhmfast: order='pcsl' draws the sets of the 2024 random-hierarchy-model library, which "
                             "has neither Zipf productions nor sparse inputs; use order='rhmfast'")
        if self.production == "zipf" and not replacement:
            raise ValueError("rhmfast: split(replacement=False) draws distinct, equally likely data (index mode), "
                             "which Zipf productions are not; pass replacement=True for iid draws from the "
                             "grammar's law (the training and test sets may then share samples)")
        if order == "pcsl" and not replacement and self.pmax > _PCSL_REPLACEMENT_ABOVE:
            warnings.warn(f"rhmfast: pmax = {self.pmax:.3e} > 1e19: order='pcsl' samples with replacement here, "
                          "as the random-hierarchy-model library does", RuntimeWarning, stacklevel=2)
            replacement = True
        if not replacement and n_train + n_test > self.pmax:
            raise ValueError(f"n_train + n_test = {n_train + n_test} exceeds pmax = {self.pmax}, the number of "
                             "distinct inputs (train and test are drawn without replacement)")
        if order == "pcsl" and not replacement and self.pmax >= _INT64_LIMIT:
            raise ValueError(f"rhmfast: order='pcsl' without replacement needs pmax < 2^63 (the random-hierarchy-"
                             f"model library's random.sample(range(pmax), ...) fails beyond), got pmax = "
                             f"{self.pmax}; pass replacement=True for its with-replacement draw")
        if not isinstance(shard, (tuple, list)) or len(shard) != 2:
            raise TypeError(f"rhmfast: shard must be a pair (rank, world_size), got {shard!r}")
        rank, world_size = shard
        shard_range(0, rank, world_size)  # checks rank and world_size now, whatever n_train and n_test
        ranges = [(first + lo, first + hi) for first, n in ((0, n_train), (n_train, n_test))
                  for lo, hi in [shard_range(n, rank, world_size)]]
        if order == "pcsl":
            return self._split_pcsl(n_train + n_test, seed, replacement, ranges, device, dtype, return_tree)
        mode = "iid" if replacement or self.pmax >= _INT64_LIMIT else "index"
        common = dict(seed=seed, mode=mode, device=device, dtype=dtype, return_tree=return_tree)
        return tuple(self.sample(hi - lo, start=lo, **common) for lo, hi in ranges)

    def _split_pcsl(self, total, seed, replacement, ranges, device, dtype, return_tree):
        """split(order="pcsl"): the library's draw of all ``total`` samples, then the parts in ranges."""
        device = self._device(device)
        dtype = self._dtype(dtype, return_tree)
        if not replacement:
            # The datum numbers as the library draws them: Python's Mersenne Twister seeded with seed, and
            # random.sample over range(pmax) (the algorithm of the Python running this; unchanged since 3.2).
            datum = random.Random(seed).sample(range(self.pmax), total)
            return tuple(self.decode(torch.tensor(datum[lo:hi], dtype=torch.int64), device=device, dtype=dtype,
                                     return_tree=return_tree) for lo, hi in ranges)
        self._check_memory(total, torch.device("cpu"), torch.int64, return_tree)
        gen = torch.Generator().manual_seed(seed)
        table = self.table("cpu").to(torch.int64)  # rows indexed by symbol: rules[l] for pcsl, first-token-uniform
        labels = torch.randint(0, self.n_classes, (total,), generator=gen)
        levels, x = [labels], labels
        for level in range(self.L):
            choice = torch.randint(0, self.m, x.shape, generator=gen)
            x = table[level][x, choice].flatten(start_dim=1)
            levels.append(x)
        parts = []
        for lo, hi in ranges:
            tokens, y = x[lo:hi].to(device=device, dtype=dtype), labels[lo:hi].to(device)
            tree = [t[lo:hi].reshape(hi - lo, self.s**level).to(device=device, dtype=dtype)
                    for level, t in enumerate(levels[:-1])]
            parts.append(self._result(tokens, y, tree, return_tree))
        return tuple(parts)

    def batches(self, batch_size: int, seed: int = 0, *, start: int = 0, mode: str = "iid", device="cpu",
                dtype: torch.dtype | None = None, return_tree: bool = False) -> Iterator:
        """Fresh batches forever (online SGD): batch k holds samples start + k*batch_size ... of the
        stream, so no sample index repeats. In ``mode="index"`` the stream ends after pmax samples."""
        batch_size = check_int("batch_size", batch_size, 1)
        start = check_int("start", start, 0)
        seed = check_seed("seed", seed, optional=False)
        device = self._device(device)  # checked now, not at the first batch
        self._check_mode(mode)
        end = self.pmax if mode == "index" else _INT64_LIMIT - 1
        self._dtype(dtype, return_tree)
        if start >= end:  # checked now, not at the first batch: batches() is not itself a generator
            raise ValueError(f"start must be < {'pmax = ' if mode == 'index' else ''}{end}, got {start}")
        return self._batch_stream(batch_size, seed, start, end, mode, device, dtype, return_tree)

    def _batch_stream(self, batch_size, seed, position, end, mode, device, dtype, return_tree) -> Iterator:
        while position < end:
            n = min(batch_size, end - position)
            yield self.sample(n, seed=seed, start=position, mode=mode, device=device, dtype=dtype,
                              return_tree=return_tree)
            position += n

    def _inference_input(self, tokens, mask):
        """The dense strings inference reads: a sparse grammar's own inputs [B, input_dim] are compacted with
        ``dense_tokens`` (their slots tell nothing about the label: every placement is equally likely);
        dense strings [B, s^L] pass. Hidden leaves of sparse inputs are refused: a mask applies to dense
        strings."""
        if self.sparsity and isinstance(tokens, torch.Tensor) and tokens.dim() == 2 \
                and tokens.shape[1] == self.input_dim:
            if mask is not None:
                raise ValueError(f"rhmfast: mask must have the dense strings' shape [B, s^L = {self.s**self.L}]: "
                                 "hide leaves of dense_tokens(inputs), not of sparse inputs")
            return self.dense_tokens(tokens), True
        return tokens, False

    def posterior(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """P(label | the visible tokens), float64 [B, n_classes], by belief propagation on the tree; mask
        [B, s^L] bool, True = hidden (see ``rhmfast.data.inference``). A sparse grammar takes its own inputs
        [B, input_dim] (no mask) or dense strings [B, s^L] (``dense_tokens`` of its inputs, any mask)."""
        from rhmfast.data import inference

        tokens, _ = self._inference_input(tokens, mask)
        return inference.posterior(self._dense_grammar(), tokens, mask)

    def leaf_posterior(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """P(leaf i = t | the visible tokens), float64 [B, s^L, v] (the downward pass of belief propagation);
        for a sparse grammar the dense leaves, of its inputs or of dense strings, as ``posterior``."""
        from rhmfast.data import inference

        tokens, _ = self._inference_input(tokens, mask)
        return inference.leaf_posterior(self._dense_grammar(), tokens, mask)

    def log_prob(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """log P(the visible tokens), float64 [B]: of the whole string without a mask (-inf where the grammar
        cannot produce it). A sparse grammar's own inputs [B, input_dim] get their full log probability, the
        dense string's plus log(1 / (s0 + 1)) for the slot of each non-root node; dense strings [B, s^L] get
        the dense string's."""
        from rhmfast.data import inference

        tokens, sparse = self._inference_input(tokens, mask)
        log_p = inference.log_prob(self._dense_grammar(), tokens, mask)
        if sparse:
            non_root = sample_ref.n_internal_nodes(self.s, self.L + 1) - 1  # the dense nodes but the root
            log_p = log_p - non_root * math.log(self.sparsity + 1)
        return log_p

    def label_hierarchy(self):
        """This grammar as a label hierarchy (``rhmfast.data.RHMLabels``): one-hot leaf tokens as inputs,
        the one-hot latent symbols of every level as labels, level 1 just above the leaves and level L the
        root class; for the learners of Daniely's label hierarchies. Dense grammars only."""
        if self.sparsity:
            raise ValueError(f"rhmfast: label_hierarchy() needs a dense grammar, this one has sparsity = "
                             f"{self.sparsity}")
        from rhmfast.data.rhm_labels import RHMLabels  # here, not at the top: rhm_labels imports RHM
        return RHMLabels(self)

    # ---- persistence ---------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the grammar as JSON (format "rhmfast.RHM", version 1): the parameters, and per level the
        parent symbols and the rule table as nested lists; the variant as production, zipf_exponent (null
        for uniform productions, the string "inf" for math.inf: JSON has no infinity), zipf_levels (null:
        every level) and sparsity. Written to a temporary file, then renamed."""
        exponent = self.zipf_exponent
        record = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION,
            "v": self.v, "m": self.m, "s": self.s, "L": self.L, "n_classes": self.n_classes,
            "seed": self.seed, "rules_sampler": self.sampler,
            "production": self.production,
            "zipf_exponent": "inf" if exponent is not None and math.isinf(exponent) else exponent,
            "zipf_levels": None if self.zipf_levels is None else list(self.zipf_levels),
            "sparsity": self.sparsity,
            "parents": [p.tolist() for p in self.parents],
            "rules": [r.tolist() for r in self.rules],
        }
        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(record, f, separators=(",", ":"))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RHM":
        """Read a grammar written by :meth:`save`.

        Everything the file promises is checked, and a violation is a ValueError naming the file and the
        field: the format and version; v, m, s, L, n_classes and seed ints (not bools or floats) in the
        constructor's ranges; a known rules_sampler; L levels of parents and rules, level l's rules a
        [len(parents[l]), m, s] nested list of ints in [0, v); the parents of level 0 the labels
        0 .. n_classes-1, those of a deeper level the symbols 0 .. v-1 (pcsl, first-token-uniform) or, for
        pcsl-2023, the symbols that occur in the rules of the level above, in increasing order; no s-tuple
        twice in a level (the grammar is unambiguous); for first-token-uniform, n_classes == v and every
        symbol starting exactly m rules of each level; production, zipf_exponent (a number >= 0 or "inf" for
        Zipf productions, null otherwise), zipf_levels (null or a list of levels in [0, L-1]) and sparsity (an
        int >= 0) as the constructor checks them -- a file without them (written before they existed) holds a
        uniform, dense grammar. A file that cannot be read (missing, unreadable) raises the OSError of
        open()."""
        path = os.fspath(path)
        with open(path, "rb") as f:
            data = f.read()
        try:
            record = json.loads(data)
        except (UnicodeDecodeError, ValueError) as error:  # JSONDecodeError is a ValueError
            raise ValueError(f"rhmfast: grammar file {path} is not valid JSON: {error}") from None
        if not isinstance(record, dict):
            raise ValueError(f"rhmfast: grammar file {path} must hold a JSON object, got {type(record).__name__}")
        if record.get("format") != FORMAT_NAME:
            raise ValueError(f"{path} is not an rhmfast grammar file (format {record.get('format')!r})")
        if type(record.get("version")) is not int or record["version"] != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported grammar format version {record.get('version')!r} "
                             f"(this rhmfast reads version {FORMAT_VERSION})")
        field = _FileFields(path, record)
        v = field.integer("v", 2, _MAX_SYMBOLS)
        m = field.integer("m", 1)
        s = field.integer("s", 2)
        L = field.integer("L", 1, 64)
        n_classes = field.integer("n_classes", 1, _MAX_SYMBOLS)
        seed = field.integer("seed", 0)
        sampler = field.get("rules_sampler")
        if not isinstance(sampler, str) or sampler not in rule_samplers.SAMPLERS:
            raise field.error("rules_sampler", f"must be one of {sorted(rule_samplers.SAMPLERS)}, got {sampler!r}")
        if sampler == "first-token-uniform" and n_classes != v:
            raise field.error("n_classes", f"must equal v = {v} for rules_sampler 'first-token-uniform', "
                                           f"got {n_classes}")
        production = field.checked("production", variants.check_production, record.get("production", "uniform"))
        exponent = record.get("zipf_exponent")
        exponent = field.checked("zipf_exponent", variants.check_zipf_exponent,
                                 math.inf if exponent == "inf" else exponent, production)
        zipf_levels = record.get("zipf_levels")
        if zipf_levels is not None and type(zipf_levels) is not list:
            raise field.error("zipf_levels", f"must be null or a list of levels, got {_short(zipf_levels)}")
        zipf_levels = field.checked("zipf_levels", variants.check_zipf_levels, zipf_levels, L, production)
        sparsity = field.integer("sparsity", 0) if "sparsity" in record else 0
        for key in ("parents", "rules"):
            levels = field.get(key)
            if not isinstance(levels, list) or len(levels) != L:
                found = f"{len(levels)}" if isinstance(levels, list) else f"a {type(levels).__name__}"
                raise field.error(key, f"must be a list of L = {L} levels, found {found}")
        parents, rules = [], []
        for level in range(L):
            top = n_classes if level == 0 else v
            what = "n_classes" if level == 0 else "v"
            p = field.int_array(f"parents[{level}]", record["parents"][level], (None,), top, what)
            r = field.int_array(f"rules[{level}]", record["rules"][level], (p.numel(), m, s), v, "v",
                                shape_text=f"[len(parents[{level}]) = {p.numel()}, m = {m}, s = {s}]")
            if level == 0 or sampler != "pcsl-2023":
                expected, meaning = torch.arange(top), (f"the labels 0 .. n_classes-1 = {top - 1}" if level == 0 else
                                                        f"the symbols 0 .. v-1 = {top - 1} (sampler {sampler!r})")
            else:
                expected = torch.unique(rules[-1])
                meaning = f"the symbols occurring in rules[{level - 1}], in increasing order (sampler 'pcsl-2023')"
            if not torch.equal(p, expected):
                raise field.error(f"parents[{level}]", f"must be {meaning}: {_short(expected.tolist())}, "
                                                       f"got {_short(p.tolist())}")
            _check_unambiguous(field, level, p, r, v)
            if sampler == "first-token-uniform":
                starts = torch.bincount(r[:, :, 0].reshape(-1), minlength=v)
                bad = int(torch.nonzero(starts != m)[0, 0]) if bool((starts != m).any()) else None
                if bad is not None:
                    raise field.error(f"rules[{level}]", f"must start every symbol exactly m = {m} times "
                                                         f"(sampler 'first-token-uniform'); symbol {bad} starts "
                                                         f"{int(starts[bad])}")
            parents.append(p)
            rules.append(r)
        grammar = cls.__new__(cls)
        grammar._init(v, m, s, L, n_classes, seed, sampler, parents, rules, production, exponent, zipf_levels,
                      sparsity)
        return grammar


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _FileFields:
    """Reads and checks the fields of a grammar file; every error names the file and the field."""

    def __init__(self, path: str, record: dict):
        self.path, self.record = path, record

    def error(self, name: str, message: str) -> ValueError:
        return ValueError(f"rhmfast: grammar file {self.path}: field {name!r} {message}")

    def get(self, name: str):
        if name not in self.record:
            raise self.error(name, "is missing")
        return self.record[name]

    def checked(self, name: str, check, *args):
        """check(*args), its error rewritten to name the file and the field."""
        try:
            return check(*args)
        except (TypeError, ValueError) as error:
            raise self.error(name, str(error).removeprefix(f"rhmfast: {name} ")) from None

    def integer(self, name: str, low: int, high: int | None = None) -> int:
        value = self.get(name)
        try:
            return check_int(name, value, low, high)
        except (TypeError, ValueError) as error:
            found = f" ({_short(value)})" if isinstance(error, TypeError) else ""
            raise self.error(name, str(error).removeprefix(f"rhmfast: {name} ") + found) from None

    def int_array(self, name: str, value, shape: tuple, top: int, top_name: str, shape_text: str | None = None):
        """A nested list of the given shape (None: any length) of ints (type int exactly: no bools, no
        floats) in [0, top) -> an int64 tensor."""
        shape_text = shape_text or "[" + ", ".join("n" if size is None else str(size) for size in shape) + "]"
        items, sizes = [value], []
        for depth, size in enumerate(shape):
            flat = []
            for item in items:
                if type(item) is not list:
                    raise self.error(name, f"must be a nested list of shape {shape_text}, got {_short(item)} "
                                           f"(a {type(item).__name__}) at depth {depth}")
                if size is not None and len(item) != size:
                    raise self.error(name, f"must have shape {shape_text}, got a list of length {len(item)} "
                                           f"at depth {depth}")
                if size is None and not sizes and len(item) == 0:
                    raise self.error(name, f"must not be empty (shape {shape_text})")
                flat.extend(item)
            sizes.append(len(items[0]) if size is None else size)
            items = flat
        if set(map(type, items)) != {int}:  # type, not isinstance: bools are ints to isinstance
            item = next(item for item in items if type(item) is not int)
            raise self.error(name, f"must hold ints (no bools, no floats), got {_short(item)} "
                                   f"(a {type(item).__name__})")
        lo, hi = min(items), max(items)  # never empty: sizes are >= 1 (m, s >= 1, parents non-empty)
        if lo < 0 or hi >= top:
            raise self.error(name, f"entries must be in [0, {top_name}-1 = {top - 1}], got {lo if lo < 0 else hi}")
        return torch.tensor(items, dtype=torch.int64).reshape(sizes)


def _check_unambiguous(field: _FileFields, level: int, parents: torch.Tensor, rules: torch.Tensor, v: int) -> None:
    """No s-tuple is the rule of two (parent, rule) slots of one level: an input would otherwise have two
    derivations, and possibly two labels."""
    m, s = rules.shape[1], rules.shape[2]
    flat = rules.reshape(-1, s)
    if v**s <= _INT64_LIMIT:  # each tuple as one base-v integer: a 1-D sort, much faster than unique(dim=0)
        powers = torch.tensor([v ** (s - 1 - k) for k in range(s)], dtype=torch.int64)
        codes, order = (flat * powers).sum(1).sort()
        same = torch.nonzero(codes[1:] == codes[:-1])
        if same.numel() == 0:
            return
        first, second = sorted((int(order[same[0, 0]]), int(order[same[0, 0] + 1])))
    else:
        _, inverse, counts = torch.unique(flat, dim=0, return_inverse=True, return_counts=True)
        if counts.numel() == flat.shape[0]:
            return
        twice = int(torch.nonzero(counts > 1)[0, 0])
        first, second = (int(k) for k in torch.nonzero(inverse == twice)[:2, 0])

    def slot(k: int) -> str:
        return f"symbol {int(parents[k // m])} (rule {k % m})"
    raise field.error(f"rules[{level}]", f"is ambiguous: the s-tuple {tuple(flat[first].tolist())} is the rule of "
                                         f"{slot(first)} and of {slot(second)}; the rules of a level must be "
                                         "distinct")
