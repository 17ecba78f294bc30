"""``rhmfast.RHM``: a Random Hierarchy Model grammar and its samplers (Cagnetta et al. 2024)."""
from __future__ import annotations

import json
import numbers
import os
from typing import Iterator

import torch

from rhmfast._checks import check_int
from rhmfast.data import rule_samplers
from rhmfast.data.exact import ExactStatistics
from rhmfast.ops.rhm_sample import rhm_decode, rhm_sample
from rhmfast.reference import rhm_sample as sample_ref

FORMAT_NAME = "rhmfast.RHM"
FORMAT_VERSION = 1
_INT64_LIMIT = 1 << 63
_TOKEN_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)


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

    Attributes: ``v, m, s, L, n_classes, seed, sampler``; ``rules`` (list of L int64 tensors, level 0
    first, [n_parents, m, s]); ``parents`` (the symbol of each row of ``rules[l]``: all symbols except
    for pcsl-2023, where only the symbols occurring in the level above own rules); ``input_dim``
    (s**L); ``pmax`` (the number of distinct inputs, an exact Python int); ``exact`` (exact statistics).
    """

    def __init__(self, v: int, m: int, s: int, L: int, n_classes: int | None = None, seed: int = 0,
                 rules: str = "pcsl"):
        v = check_int("v", v, 2)
        m = check_int("m", m, 1)
        s = check_int("s", s, 2)
        L = check_int("L", L, 1, 64)
        n_classes = v if n_classes is None else check_int("n_classes", n_classes, 1)
        seed = check_int("seed", seed, 0)
        if rules not in rule_samplers.SAMPLERS:
            raise ValueError(f"rules must be one of {sorted(rule_samplers.SAMPLERS)}, got {rules!r}")
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
        self._init(v, m, s, L, n_classes, seed, rules, [p for p, _ in levels], [r for _, r in levels])

    def _init(self, v, m, s, L, n_classes, seed, sampler, parents, rules):
        self.v, self.m, self.s, self.L, self.n_classes = v, m, s, L, n_classes
        self.seed, self.sampler = seed, sampler
        self.parents = [p.to(torch.int64) for p in parents]
        self.rules = [r.to(torch.int64) for r in rules]
        self.input_dim = s**L
        self.pmax = n_classes * sample_ref.per_class_count(m, s, L)
        # Kernel table: int32 [L, R, m, s], rows indexed by symbol id (rows of symbols without rules stay 0
        # and are never read).
        table = torch.zeros(L, max(v, n_classes), m, s, dtype=torch.int32)
        for level, (p, r) in enumerate(zip(self.parents, self.rules)):
            table[level, p] = r.to(torch.int32)
        self._tables = {torch.device("cpu"): table}
        self.exact = ExactStatistics(self)

    def __repr__(self) -> str:
        return (f"RHM(v={self.v}, m={self.m}, s={self.s}, L={self.L}, n_classes={self.n_classes}, "
                f"seed={self.seed}, rules={self.sampler!r})")

    def table(self, device="cpu") -> torch.Tensor:
        """The int32 [L, R, m, s] rule table the kernels read, on ``device`` (cached)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._tables:
            self._tables[device] = self._tables[torch.device("cpu")].to(device)
        return self._tables[device]

    def _dtype(self, dtype, return_tree: bool) -> torch.dtype:
        top = max(self.v, self.n_classes if return_tree else 0) - 1
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

    @staticmethod
    def _result(tokens, labels, tree, return_tree):
        return (tokens, labels, [*tree, tokens]) if return_tree else (tokens, labels)

    # ---- sampling ------------------------------------------------------------------------------

    def sample(self, n: int, *, seed: int = 0, start: int = 0, mode: str = "iid", device="cpu",
               dtype: torch.dtype | None = None, return_tree: bool = False):
        """Draw samples ``start .. start+n-1`` of the stream ``(seed, mode)``.

        Returns ``(tokens [n, s^L], labels [n] int64)``, and with ``return_tree=True`` also the latent
        tree: a list of L+1 tensors, level l of shape [n, s^l] (level 0 the label, level L the tokens).
        Sample number i depends only on (grammar, seed, mode, i): never on n, chunking, threads, backend
        or device. ``mode="iid"``: uniform label and rule choices. ``mode="index"``: sample i is datum
        number pi(i) for a keyed pseudo-random permutation pi of [0, pmax) -- exact sampling without
        replacement (needs pmax < 2^63; disjoint ranges of i give disjoint sets).
        """
        n = check_int("n", n, 0)
        start = check_int("start", start, 0)
        seed = check_int("seed", seed, 0, (1 << 64) - 1)
        if mode not in ("iid", "index"):
            raise ValueError(f"mode must be 'iid' or 'index', got {mode!r}")
        if start + n >= _INT64_LIMIT:
            raise ValueError(f"start + n must be < 2^63, got {start + n}")
        if mode == "index":
            if self.pmax >= _INT64_LIMIT:
                raise ValueError(f"mode='index' needs pmax < 2^63, this grammar has pmax = {self.pmax}; use mode='iid'")
            if start + n > self.pmax:
                raise ValueError(f"mode='index' draws without replacement: start + n must be <= pmax = {self.pmax}, "
                                 f"got {start + n}")
        dtype = self._dtype(dtype, return_tree)
        out = rhm_sample(self.table(device), self.n_classes, n, seed, start, mode, dtype, return_tree)
        return self._result(*out, return_tree)

    def decode(self, indices, *, device="cpu", dtype: torch.dtype | None = None, return_tree: bool = False):
        """Datum numbers in [0, pmax) (an int, a sequence of ints, or an int64 tensor) to samples, with the
        reference codes' convention: label = i // (pmax / n_classes), then the remainder's base-m digits,
        root first and then each level's nodes, are the rule choices. Python ints of any size are
        accepted (pmax may exceed 2^64)."""
        dtype = self._dtype(dtype, return_tree)
        if isinstance(indices, torch.Tensor):
            if indices.dtype != torch.int64:
                raise TypeError(f"indices must be an int64 tensor, got {indices.dtype}")
            datum = indices.reshape(-1).to(device)
        else:
            values = [indices] if isinstance(indices, numbers.Integral) else list(indices)
            # numpy integers too (bools stay, for _check_int to refuse)
            values = [int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v for v in values]
            for value in values:
                check_int("indices", value, 0, self.pmax - 1)
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

    def split(self, n_train: int, n_test: int, seed: int = 0, *, shard: tuple[int, int] = (0, 1), device="cpu",
              dtype: torch.dtype | None = None, return_tree: bool = False):
        """Disjoint training and test sets: ``((x_train, y_train), (x_test, y_test))``.

        Exact sampling without replacement (index mode, disjoint index ranges) when pmax < 2^63;
        beyond that, iid draws: any repeat then has probability below (n_train + n_test)^2 / pmax,
        which is below 2^-63 (n_train + n_test)^2. The training set is samples [0, n_train) of that
        stream, the test set samples [n_train, n_train + n_test).

        ``shard=(rank, world_size)`` returns only that rank's contiguous part of each set (its
        ``shard_range`` of the training and of the test samples), generating nothing else: the parts
        of ranks 0 .. world_size-1, concatenated, are the unsharded sets.
        """
        n_train = check_int("n_train", n_train, 0)
        n_test = check_int("n_test", n_test, 0)
        if n_train + n_test > self.pmax:
            raise ValueError(f"n_train + n_test = {n_train + n_test} exceeds pmax = {self.pmax}, the number of "
                             "distinct inputs (train and test are drawn without replacement)")
        rank, world_size = shard
        mode = "index" if self.pmax < _INT64_LIMIT else "iid"
        common = dict(seed=seed, mode=mode, device=device, dtype=dtype, return_tree=return_tree)
        parts = []
        for first, n in ((0, n_train), (n_train, n_test)):
            lo, hi = shard_range(n, rank, world_size)
            parts.append(self.sample(hi - lo, start=first + lo, **common))
        return tuple(parts)

    def batches(self, batch_size: int, seed: int = 0, *, start: int = 0, mode: str = "iid", device="cpu",
                dtype: torch.dtype | None = None, return_tree: bool = False) -> Iterator:
        """Fresh batches forever (online SGD): batch k holds samples start + k*batch_size ... of the
        stream, so no sample index repeats. In ``mode="index"`` the stream ends after pmax samples."""
        batch_size = check_int("batch_size", batch_size, 1)
        start = check_int("start", start, 0)
        if mode not in ("iid", "index"):
            raise ValueError(f"mode must be 'iid' or 'index', got {mode!r}")
        end = self.pmax if mode == "index" else _INT64_LIMIT - 1
        if start >= end:  # checked now, not at the first batch: batches() is not itself a generator
            raise ValueError(f"start must be < {'pmax = ' if mode == 'index' else ''}{end}, got {start}")
        return self._batch_stream(batch_size, seed, start, end, mode, device, dtype, return_tree)

    def _batch_stream(self, batch_size, seed, position, end, mode, device, dtype, return_tree) -> Iterator:
        while position < end:
            n = min(batch_size, end - position)
            yield self.sample(n, seed=seed, start=position, mode=mode, device=device, dtype=dtype,
                              return_tree=return_tree)
            position += n

    def label_hierarchy(self):
        """This grammar as a label hierarchy (``rhmfast.data.RHMLabels``): one-hot leaf tokens as inputs,
        the one-hot latent symbols of every level as labels, level 1 just above the leaves and level L the
        root class; for the learners of Daniely's label hierarchies."""
        from rhmfast.data.rhm_labels import RHMLabels  # here, not at the top: rhm_labels imports RHM
        return RHMLabels(self)

    # ---- persistence ---------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the grammar as JSON (format "rhmfast.RHM", version 1): the parameters, and per level the
        parent symbols and the rule table as nested lists. Written to a temporary file, then renamed."""
        record = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION,
            "v": self.v, "m": self.m, "s": self.s, "L": self.L, "n_classes": self.n_classes,
            "seed": self.seed, "rules_sampler": self.sampler,
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
        """Read a grammar written by :meth:`save`."""
        with open(path) as f:
            record = json.load(f)
        if record.get("format") != FORMAT_NAME:
            raise ValueError(f"{path} is not an rhmfast grammar file (format {record.get('format')!r})")
        if record.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported grammar format version {record.get('version')!r} "
                             f"(this rhmfast reads version {FORMAT_VERSION})")
        v, m, s, L, n_classes = (record[k] for k in ("v", "m", "s", "L", "n_classes"))
        parents = [torch.tensor(p, dtype=torch.int64) for p in record["parents"]]
        rules = [torch.tensor(r, dtype=torch.int64).reshape(len(p), m, s) for p, r in zip(record["parents"], record["rules"])]
        if len(rules) != L:
            raise ValueError(f"{path}: expected {L} levels of rules, found {len(rules)}")
        grammar = cls.__new__(cls)
        grammar._init(v, m, s, L, n_classes, record["seed"], record["rules_sampler"], parents, rules)
        return grammar
