"""Two variants of the RHM grammar, as ``RHM`` options: their argument checks, rule probabilities and samplers.

Zipf productions (``production="zipf"``; Cagnetta, Kang & Wyart, ICML 2025, arXiv 2505.07067): at the Zipf
levels, rule i (i = 0 .. m-1, in the order of the grammar's rule table) of every symbol is chosen with
probability proportional to (i + 1)^-(1 + a), a = ``zipf_exponent`` (a = inf: always rule 0); the other levels
and the label stay uniform. The pcsl-epfl random-hierarchy-model library, up to its commit ca0c5aa (June 2024),
has no Zipf productions; this follows the paper's law f_k ∝ k^-(1+a), k = 1 .. m.

The sparse RHM (``sparsity=s0``; Tomasini & Wyart, ICML 2024, arXiv 2404.10727, their "sparsity A", as the
authors' code UmbertoTomasini/sparse_hierarchy_model builds it): every child of a symbol gets its own block of
s0 + 1 slots, the blocks in the children's order; the child sits in one slot of its block, drawn uniformly and
independently of everything else, and the other s0 slots hold the blank token (id v, the authors' choice
too), which expands into blanks. A symbol of level l thus becomes a patch of s(s0+1) level-(l+1) positions,
and an input has (s(s0+1))^L tokens in [0, v]. Where we chose: the rules are those the grammar's rule sampler
draws without sparsity (the authors' code samples its own tuples, with the blank among the level's
symbols), so a sparse grammar and its dense twin share their rules and their dense samples; the blank is a
token, not a symbol with rules. Their "sparsity B" (the s children anywhere in the patch, in order) is not
implemented.

Counter layout (Philox4x32-10, key = the seed's two 32-bit halves; i = the sample's index in its stream):

- Zipf: the label is lane 0 of block (0, lo32(i), hi32(i), 3) mapped exactly to [0, n_classes) (a rejected
  word is redrawn with purpose word 3 ^ attempt << 8); internal node t (breadth-first) draws the 53-bit
  uniform u = ((w0 >> 5) * 2^26 + (w1 >> 6)) / 2^53 from lanes 2(t % 2), 2(t % 2) + 1 of block
  (1 + t // 2, lo32(i), hi32(i), 3), and takes the first rule whose cumulative probability (float64) exceeds u.
- Sparse positions: non-root node j of the dense tree (breadth-first, j >= 1) takes the slot lane (j - 1) % 4
  of block ((j - 1) // 4, lo32(i), hi32(i), 4), mapped exactly to [0, s0] (redraws with 4 ^ attempt << 8).

The purpose words 3 and 4 are distinct in their low byte from the other users of the generator
(``rhmfast.reference.philox``: 0 the iid sampler, 1 the index mode's permutation, 2 the label hierarchies), so
no two streams share a counter. Sample i depends only on (grammar, seed, i): never on n, chunking or device.
"""
from __future__ import annotations

import math
import numbers

import torch

from rhmfast._checks import check_choice, check_int
from rhmfast.ops.rhm_sample import philox_uniform, rhm_sample
from rhmfast.reference import rhm_sample as sample_ref
from rhmfast.reference.philox import MASK32

PRODUCTIONS = ("uniform", "zipf")
PURPOSE_ZIPF = 3
PURPOSE_POSITIONS = 4
MAX_INPUT = 1 << 31  # tokens of one input: the kernels' limit on s^L, kept for the sparse inputs too
_CHUNK_ELEMENTS = 1 << 21  # int64 intermediates per chunk of samples: bounds the memory of a draw
_TWO_POW_MINUS_53 = 2.0**-53


# ---- argument checks -----------------------------------------------------------------------------

def check_production(production) -> str:
    return check_choice("production", production, PRODUCTIONS)


def check_zipf_exponent(value, production: str) -> float | None:
    """None for uniform productions; for Zipf ones a real number >= 0, or math.inf (a float)."""
    if production != "zipf":
        if value is not None:
            raise ValueError(f"rhmfast: zipf_exponent needs production='zipf', got production={production!r}")
        return None
    if value is None:
        raise ValueError("rhmfast: zipf_exponent must be given with production='zipf' (a real number >= 0, "
                         "or math.inf)")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"rhmfast: zipf_exponent must be a real number >= 0 or math.inf, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or value < 0:
        raise ValueError(f"rhmfast: zipf_exponent must be >= 0 (or math.inf), got {value}")
    return value


def check_zipf_levels(levels, L: int, production: str) -> tuple[int, ...] | None:
    """None (every level) or the sorted, distinct levels of a non-empty collection of ints in [0, L-1]."""
    if levels is None:
        return None
    if production != "zipf":
        raise ValueError(f"rhmfast: zipf_levels needs production='zipf', got production={production!r}")
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
        raise TypeError(f"rhmfast: zipf_levels must be None or a collection of ints in [0, L-1 = {L - 1}], "
                        f"got {type(levels).__name__}")
    values = [int(x) if isinstance(x, numbers.Integral) and not isinstance(x, bool) else x for x in levels]
    for level in values:
        check_int("zipf_levels", level, 0, L - 1)
    if not values:
        raise ValueError(f"rhmfast: zipf_levels must name at least one level in [0, L-1 = {L - 1}] (None: every "
                         "level), got an empty collection")
    return tuple(sorted(set(values)))


def check_sparsity(value) -> int:
    return check_int("sparsity", value, 0)


# ---- rule probabilities --------------------------------------------------------------------------

def zipf_probabilities(m: int, exponent: float) -> torch.Tensor:
    """float64 [m]: p_i ∝ (i + 1)^-(1 + exponent); exponent = inf puts all the mass on rule 0."""
    if math.isinf(exponent):
        return torch.nn.functional.one_hot(torch.tensor(0), m).double()
    weights = torch.arange(1, m + 1, dtype=torch.float64).pow(-(1.0 + exponent))
    return weights / weights.sum()


def level_probabilities(grammar) -> torch.Tensor:
    """float64 [L, m]: the probability of each rule index at each level (the same for every symbol)."""
    probs = torch.full((grammar.L, grammar.m), 1.0 / grammar.m, dtype=torch.float64)
    if grammar.production == "zipf":
        levels = range(grammar.L) if grammar.zipf_levels is None else grammar.zipf_levels
        probs[list(levels)] = zipf_probabilities(grammar.m, grammar.zipf_exponent)
    return probs


def _cumulative(grammar, device) -> torch.Tensor:
    """float64 [L, m] cumulative rule probabilities, the last entry exactly 1 (u < 1 always finds a rule)."""
    cdf = level_probabilities(grammar).cumsum(1)
    cdf[:, -1] = 1.0
    return cdf.to(device)


def rule_choices(grammar, level: int, shape, generator: torch.Generator) -> torch.Tensor:
    """Rule indices [shape] (int64, on the generator's device) of level ``level`` drawn from the grammar's law
    with a torch generator: uniform (``torch.randint``, as the uniform samplers of the observables draw them)
    or through the level's cumulative Zipf probabilities."""
    if grammar.production == "uniform":
        return torch.randint(grammar.m, shape, generator=generator, device=generator.device)
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64)
    return torch.searchsorted(_cumulative(grammar, generator.device)[level], u, right=True)


# ---- samplers ------------------------------------------------------------------------------------

def _counters(index: torch.Tensor, n_blocks: int, first_block: int, purpose: int) -> torch.Tensor:
    """int64 [n * n_blocks, 4]: the blocks first_block .. first_block + n_blocks - 1 of every sample in index."""
    n = index.numel()
    block = torch.arange(first_block, first_block + n_blocks, dtype=torch.int64, device=index.device)
    return torch.stack([block.expand(n, n_blocks), (index & MASK32).unsqueeze(1).expand(n, n_blocks),
                        (index >> 32).unsqueeze(1).expand(n, n_blocks),
                        torch.full((n, n_blocks), purpose, dtype=torch.int64, device=index.device)], dim=2).view(-1, 4)


def zipf_choices(grammar, seed: int, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels [n] and breadth-first rule choices [n, n_internal] (int64) of the Zipf samples ``index``."""
    n = index.numel()
    n_internal = sample_ref.n_internal_nodes(grammar.s, grammar.L)
    labels = philox_uniform(_counters(index, 1, 0, PURPOSE_ZIPF), seed, grammar.n_classes)[:, 0]
    n_blocks = (n_internal + 1) // 2
    words = philox_uniform(_counters(index, n_blocks, 1, PURPOSE_ZIPF), seed).view(n, 2 * n_blocks, 2)
    u = ((words[..., 0] >> 5) * (1 << 26) + (words[..., 1] >> 6)).double() * _TWO_POW_MINUS_53
    cdf = _cumulative(grammar, index.device)
    choices = torch.empty(n, n_internal, dtype=torch.int64, device=index.device)
    first = 0
    for level in range(grammar.L):
        width = grammar.s**level
        choices[:, first:first + width] = torch.searchsorted(cdf[level], u[:, first:first + width].contiguous(),
                                                             right=True)
        first += width
    return labels, choices


def positions(grammar, seed: int, index: torch.Tensor) -> torch.Tensor:
    """The slot in [0, s0] of every non-root node of the dense tree, int64 [n, n_nodes - 1] (breadth-first)."""
    count = sample_ref.n_internal_nodes(grammar.s, grammar.L + 1) - 1
    n_blocks = (count + 3) // 4
    words = philox_uniform(_counters(index, n_blocks, 0, PURPOSE_POSITIONS), seed, grammar.sparsity + 1)
    return words.view(index.numel(), 4 * n_blocks)[:, :count]


def _place(grammar, slots: torch.Tensor, levels: list[torch.Tensor]) -> list[torch.Tensor]:
    """The sparse strings [n, (s(s0+1))^l] (int64) of the dense levels l = 0 .. L in ``levels`` (entry l the
    level-l symbols [n, s^l], or None where that string is not wanted), each node in its slot."""
    s, S, n = grammar.s, grammar.patch_size, slots.shape[0]
    child = torch.arange(s, dtype=torch.int64, device=slots.device) * (grammar.sparsity + 1)
    offsets = torch.zeros(n, 1, dtype=torch.int64, device=slots.device)
    out, first = [levels[0]], 0
    for level in range(1, grammar.L + 1):
        width = s**level
        slot = slots[:, first:first + width].view(n, width // s, s)
        offsets = (offsets.unsqueeze(2) * S + child + slot).view(n, width)
        first += width
        if levels[level] is None:
            out.append(None)
            continue
        string = torch.full((n, S**level), grammar.blank, dtype=torch.int64, device=slots.device)
        out.append(string.scatter_(1, offsets, levels[level].long()))
    return out


def _chunk(grammar, lo: int, hi: int, seed: int, mode: str, device, return_tree: bool):
    """Samples lo .. hi-1: int64 tokens [hi - lo, input_dim], labels, and the tree's levels 0 .. L-1 (or [])."""
    table = grammar.table(device)
    if grammar.production == "zipf":
        index = torch.arange(lo, hi, dtype=torch.int64, device=device)
        labels, choices = zipf_choices(grammar, seed, index)
        tokens, labels, tree = sample_ref.expand(table, labels, choices, torch.int64, return_tree)
    else:
        tokens, labels, tree = rhm_sample(table, grammar.n_classes, hi - lo, seed, lo, mode, torch.int64,
                                          return_tree)
    if grammar.sparsity:
        slots = positions(grammar, seed, torch.arange(lo, hi, dtype=torch.int64, device=device))
        dense = [*tree, tokens] if return_tree else [None] * grammar.L + [tokens]
        *tree, tokens = _place(grammar, slots, dense)
        tree = tree if return_tree else []
    return tokens, labels, tree


def sample(grammar, n: int, seed: int, start: int, mode: str, device: torch.device, dtype: torch.dtype,
           return_tree: bool):
    """``RHM.sample`` of a Zipf or sparse grammar (arguments checked there): (tokens [n, input_dim] of dtype,
    labels [n] int64, the tree's levels 0 .. L-1 of dtype), drawn in chunks of samples (counter-based, so
    the chunks do not change them)."""
    for what, size in (("s^L", grammar.s**grammar.L), ("the input length (s(s0+1))^L", grammar.input_dim)):
        if size > MAX_INPUT:
            raise ValueError(f"rhmfast: {what} must be <= 2^31, got {size}")
    S = grammar.patch_size
    widths = [S**level for level in range(grammar.L)] if return_tree else []
    tokens = torch.empty(n, grammar.input_dim, dtype=dtype, device=device)
    labels = torch.empty(n, dtype=torch.int64, device=device)
    tree = [torch.empty(n, width, dtype=dtype, device=device) for width in widths]
    per_sample = 4 * sample_ref.n_internal_nodes(grammar.s, grammar.L + 1) + 2 * (grammar.input_dim + sum(widths))
    step = max(1, _CHUNK_ELEMENTS // per_sample)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        part_tokens, part_labels, part_tree = _chunk(grammar, start + lo, start + hi, seed, mode, device, return_tree)
        tokens[lo:hi] = part_tokens
        labels[lo:hi] = part_labels
        for level, part in zip(tree, part_tree):
            level[lo:hi] = part
    return tokens, labels, tree


# ---- sparse strings ------------------------------------------------------------------------------

def dense_strings(grammar, tokens: torch.Tensor, level: int) -> torch.Tensor:
    """The dense strings [B, s^level] (tokens' dtype) of level-``level`` (1 <= level <= L) sparse strings
    [B, (s(s0+1))^level]:
    their informative (non-blank) tokens in order. A string is well-formed when every patch of s(s0+1)
    positions below an informative position holds exactly one informative token in each of its s blocks of
    s0 + 1 slots, every patch below a blank holds only blanks, and the root is informative; a ValueError
    names the first sample and patch that is not."""
    s, S, v = grammar.s, grammar.patch_size, grammar.v
    width = S**level
    if not isinstance(tokens, torch.Tensor) or tokens.dtype.is_floating_point or tokens.dtype.is_complex \
            or tokens.dtype == torch.bool:
        got = tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise TypeError(f"rhmfast: tokens must be an integer tensor [B, {width}], got {got}")
    if tokens.dim() != 2 or tokens.shape[1] != width:
        raise ValueError(f"rhmfast: tokens must have shape [B, (s(s0+1))^{level} = {width}], got {list(tokens.shape)}")
    if grammar.blank is None:
        top, what = v - 1, f"[0, v-1 = {v - 1}]"
    else:
        top, what = v, f"[0, v = {v}] (v the blank)"
    if tokens.numel():
        lo, hi = (int(t) for t in torch.aminmax(tokens))
        if lo < 0 or hi > top:
            raise ValueError(f"rhmfast: tokens must hold ids in {what}, got {lo if lo < 0 else hi}")
    if grammar.blank is None:
        return tokens
    B = tokens.shape[0]
    present = tokens != grammar.blank
    for k in range(level, 0, -1):
        counts = present.view(B, -1, s, grammar.sparsity + 1).sum(-1)  # [B, S^(k-1), s]
        full, empty = (counts == 1).all(-1), (counts == 0).all(-1)
        bad = ~(full | empty)
        if bool(bad.any()):
            b, patch = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"rhmfast: tokens[{b}] is not a well-formed sparse string: the patch of positions "
                             f"{patch * S} .. {patch * S + S - 1} of its level-{k} string holds "
                             f"{counts[b, patch].tolist()} informative tokens in its s = {s} blocks of s0 + 1 = "
                             f"{grammar.sparsity + 1} slots (each must hold exactly one, or all none below a blank)")
        present = full
    if not bool(present.all()):
        b = int((~present).nonzero()[0, 0])
        raise ValueError(f"rhmfast: tokens[{b}] is not a well-formed sparse string: it holds only blanks")
    return tokens[tokens != grammar.blank].view(B, s**level)
