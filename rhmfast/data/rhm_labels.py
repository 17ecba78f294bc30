"""``RHMLabels``: an RHM seen as a label hierarchy, every latent symbol of its tree a revealed label, so that
the learners of Daniely's label hierarchies (``rhmfast.models.ResidualLayerwiseNet``,
``rhmfast.train.train_residual_layerwise``) run on it as on a ``LabelHierarchy``. Built by
``RHM.label_hierarchy()``.

Data layout (v, s, L, n_classes the grammar's; tree level l of ``RHM.sample(return_tree=True)`` has s^l
positions, l = 0 the root class, l = L the leaf tokens)
  inputs   d = v * s^L: x[:, p*v + t] = +1 iff leaf p holds token t, else -1 (position-major one-hot).
  levels   r = L label levels, level 1 first: level i < L is tree level L - i, s^(L-i) positions times v
           symbols, label (p, a) is column offsets[i-1] + p*v + a, +1 iff position p holds symbol a;
           level L is the root: n_classes labels, column offsets[L-1] + c, +1 iff the class is c.
           offsets[0] = 0 and offsets[i] = offsets[i-1] + size of level i;
           n_labels = v * (s^(L-1) + ... + s) + n_classes.
  nodes    as in ``rhmfast.data.hierarchy``: inputs are nodes 0..d-1, label j is node d + j (column j of y).
  parents  int64 [n_labels, v*s]: a label at position p of its level reads the one-hot entries of its s
           children, positions p*s .. p*s + s - 1 of the level below (the leaves for level 1), child k's
           entries at k*v .. k*v + v - 1. The grammar is unambiguous, so each label is a function of them.
  samples  sample(n, seed=, start=) -> x int8 [n, d], y int8 [n, n_labels], entries +-1; sample i is sample i
           of the RHM's stream (seed, mode="iid"), so it depends only on (grammar, seed, i).
"""
from __future__ import annotations

import torch

from rhmfast._checks import check_int
from rhmfast.data.grammar import RHM

_CHUNK = 1 << 16  # samples per call of the grammar's sampler: bounds the int64 tree held at once


class RHMLabels:
    """The latent symbols of an RHM's tree as ``r = L`` levels of +-1 one-hot labels over the one-hot leaf
    tokens (layout in the module docstring). Attributes as ``LabelHierarchy``: ``d``, ``n_labels``, ``r``,
    ``levels``, ``parents``, ``fan_in = v*s``, ``gate = "rhm"``, ``wiring = "tree"``, ``seed`` (the
    grammar's rules seed), plus ``grammar``, ``offsets`` and ``mode`` (the sampling mode, "iid")."""

    gate = "rhm"
    wiring = "tree"
    mode = "iid"  # the RHM's default: the label hierarchy's samples are its iid stream

    def __init__(self, grammar):
        if not isinstance(grammar, RHM):
            raise ValueError(f"rhmfast: grammar must be an RHM, got {type(grammar).__name__}")
        v, s, L = grammar.v, grammar.s, grammar.L
        self.grammar = grammar
        self.d = v * s**L
        self.fan_in = v * s
        self.seed = grammar.seed
        self.r = L
        sizes = [v * s**(L - i) for i in range(1, L)] + [grammar.n_classes]
        self.offsets = torch.tensor([0] + sizes).cumsum(0).tolist()
        self.n_labels = self.offsets[-1]
        self.levels = [torch.arange(lo, hi) for lo, hi in zip(self.offsets[:-1], self.offsets[1:])]
        # parents: level i's first child node is below_first (inputs for level 1, level i-1's labels above)
        children = torch.arange(self.fan_in)  # child k's symbol t at k*v + t, children consecutive
        rows = []
        for i in range(1, L + 1):
            below_first = 0 if i == 1 else self.d + self.offsets[i - 2]
            if i < L:
                positions = torch.arange(s**(L - i)).repeat_interleave(v)  # label p*v + a reads position p
            else:
                positions = torch.zeros(grammar.n_classes, dtype=torch.int64)  # the root: all classes, one node
            rows.append(below_first + positions[:, None] * self.fan_in + children)
        self.parents = torch.cat(rows)

    def node_parents(self, node: int) -> torch.Tensor:
        """int64 [fan_in]: the nodes that label node ``node`` (d .. d + n_labels - 1) reads."""
        node = check_int("node", node, self.d, self.d + self.n_labels - 1)
        return self.parents[node - self.d].clone()

    def sample(self, n: int, *, seed: int = 0, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``start .. start+n-1`` of the grammar's stream ``seed``: ``(x int8 [n, d], y int8 [n,
        n_labels])``, entries +-1. Sample i depends only on (grammar, seed, i)."""
        n = check_int("n", n, 0)
        seed = check_int("seed", seed, 0, (1 << 64) - 1)
        start = check_int("start", start, 0)
        if start + n >= 1 << 63:
            raise ValueError(f"rhmfast: start + n must be < 2^63, got {start + n}")
        x = torch.full((n, self.d), -1, dtype=torch.int8)
        y = torch.full((n, self.n_labels), -1, dtype=torch.int8)
        v, L = self.grammar.v, self.r
        for lo in range(0, n, _CHUNK):
            hi = min(n, lo + _CHUNK)
            _, _, tree = self.grammar.sample(hi - lo, seed=seed, start=start + lo, mode=self.mode,
                                             dtype=torch.int64, return_tree=True)
            _set_one_hot(x[lo:hi], tree[L], v)
            for i in range(1, L + 1):  # level i is tree level L - i; the root's "position" 0 spans n_classes
                columns = slice(self.offsets[i - 1], self.offsets[i])
                _set_one_hot(y[lo:hi, columns], tree[L - i], v)
        return x, y

    def __repr__(self) -> str:
        return (f"RHMLabels({self.grammar!r}, d={self.d}, levels={[len(level) for level in self.levels]}, "
                f"fan_in={self.fan_in})")


def _set_one_hot(out: torch.Tensor, symbols: torch.Tensor, v: int) -> None:
    """Set out[i, p*v + symbols[i, p]] = +1 (out holds -1 elsewhere); symbols int64 [n, positions]."""
    columns = torch.arange(symbols.shape[1]) * v + symbols
    out.scatter_(1, columns, 1)
