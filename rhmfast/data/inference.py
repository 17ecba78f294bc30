"""Exact inference in an RHM: P(label | visible leaves), log P(visible leaves) and P(leaf | visible leaves)
by belief propagation on the fixed s-ary tree (the ``rhm_posterior`` op).

The model is the grammar's generative law: a uniform label, then every node of every level picks one of
its symbol's m rules independently, uniformly or with the grammar's rule probabilities (Zipf productions:
``RHM.rule_probs``). The grammar is unambiguous, so with every leaf visible
the posterior is one-hot on the string's only label; hiding leaves (``mask`` True) marginalises them.
One upward pass (and for ``leaf_posterior`` one downward pass) per sample, about s^L * v * m operations,
with messages normalised at every node so nothing underflows however deep the tree.

Evidence the grammar cannot produce (a string no derivation yields, or visible leaves no derivation agrees
with) has log_prob -inf and NaN rows in ``posterior`` and ``leaf_posterior``: there is no conditional law to
report, and a NaN row cannot be mistaken for one. Tokens at hidden positions are never read: they may hold
any value (a placeholder such as v, for instance).
"""
from __future__ import annotations

import weakref
from typing import NamedTuple

import torch

from rhmfast.ops.rhm_posterior import rhm_posterior
from rhmfast.reference.token_patch_embed import TOKEN_DTYPES

# grammar -> {device: owned}, built on first use (the grammar's rules never change).
_OWNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Inference(NamedTuple):
    posterior: torch.Tensor       # float64 [B, n_classes]
    log_prob: torch.Tensor        # float64 [B]
    leaf_posterior: torch.Tensor  # float64 [B, s^L, v] (empty [0] when not asked for)


def posterior(grammar, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """P(label | visible leaves), float64 [B, n_classes], for tokens [B, s^L] (uint8, int16, int32 or int64,
    visible ones in [0, v)) and mask None (all visible) or bool [B, s^L], True = hidden. NaN rows for
    evidence the grammar cannot produce."""
    return infer(grammar, tokens, mask).posterior


def log_prob(grammar, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """log P(visible leaves), float64 [B]: with no mask, the log-probability of the whole string,
    -log(n_classes) - n_internal * log(m) for every string the grammar produces; -inf where it cannot."""
    return infer(grammar, tokens, mask).log_prob


def leaf_posterior(grammar, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """P(leaf i = t | visible leaves), float64 [B, s^L, v]: the one-hot of the token at a visible leaf, the
    marginal law at a hidden one. NaN rows for evidence the grammar cannot produce."""
    return infer(grammar, tokens, mask, leaves=True).leaf_posterior


def infer(grammar, tokens: torch.Tensor, mask: torch.Tensor | None = None, *, leaves: bool = False) -> Inference:
    """posterior, log_prob and (with ``leaves``, one more pass) leaf_posterior of one belief propagation."""
    _check_grammar(grammar)
    _check_tokens(grammar, tokens, mask)
    if not isinstance(leaves, bool):
        raise TypeError(f"rhmfast: leaves must be a bool, got {type(leaves).__name__}")
    table = grammar.table(tokens.device)
    weights = grammar.rule_probs(table.device) if hasattr(grammar, "rule_probs") else None
    return Inference(*rhm_posterior(table, _owned(grammar, table.device), tokens, mask, grammar.n_classes,
                                    grammar.v, leaves, weights))


def _check_grammar(grammar) -> None:
    from rhmfast.data.grammar import RHM  # here: grammar.py may import this module

    if not isinstance(grammar, RHM):
        raise TypeError(f"rhmfast: grammar must be an rhmfast.RHM, got {type(grammar).__name__}")


def _check_tokens(grammar, tokens, mask) -> None:
    """Types, shapes and devices; the values of visible tokens are checked by the op, where it reads them."""
    d = grammar.input_dim
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"rhmfast: tokens must be an integer tensor [B, s^L = {d}], got {type(tokens).__name__}")
    if tokens.dtype not in TOKEN_DTYPES:
        raise TypeError(f"rhmfast: tokens must have dtype uint8, int16, int32 or int64 (ids in [0, v={grammar.v})), "
                        f"got {tokens.dtype}")
    if tokens.dim() != 2 or tokens.shape[1] != d:
        raise ValueError(f"rhmfast: tokens must have shape [B, s^L = {d}], got {list(tokens.shape)}")
    if tokens.device.type not in ("cpu", "cuda"):
        raise ValueError(f"rhmfast: tokens must be on a CPU or CUDA device, got {tokens.device}")
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"rhmfast: mask must be None or a bool tensor [B, s^L = {d}], got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"rhmfast: mask must be a bool tensor (True = hidden), got dtype {mask.dtype}")
    if mask.shape != tokens.shape:
        raise ValueError(f"rhmfast: mask must have the shape of tokens {list(tokens.shape)}, got {list(mask.shape)}")
    if mask.device != tokens.device:
        raise ValueError(f"rhmfast: mask must be on the device of tokens ({tokens.device}), got {mask.device}")


def _owned(grammar, device: torch.device) -> torch.Tensor:
    """bool [L, R]: which symbol of each level owns rules (the rows of the grammar's kernel table that are
    rules). Every symbol for pcsl and first-token-uniform; for pcsl-2023 only those the level above uses."""
    per_device = _OWNED.setdefault(grammar, {})
    if device not in per_device:
        table = grammar.table()
        owned = torch.zeros(table.shape[:2], dtype=torch.bool)
        for level, parents in enumerate(grammar.parents):
            owned[level, parents] = True
        per_device[device] = owned.to(device)
    return per_device[device]
