"""Pure-PyTorch reference of the ``rhm_posterior`` op: exact belief propagation on the RHM tree, level by
level with batched tensor ops, float64. The executable specification of the C++/CUDA kernels (layout
contract in csrc/rhm_posterior.h), the fallback when the extension is not built, and the benchmark's
baseline. Same arguments, checks and results (up to float64 rounding) as the kernels.

Messages: the upward message of a node is P(evidence below it | its symbol), the downward one P(evidence
outside it, its symbol); both are normalised to sum 1 at every node, the logs of the upward sums adding up
to log P(evidence), so nothing underflows. Evidence the grammar cannot produce: log_prob -inf, NaN rows.
"""
from __future__ import annotations

import math

import torch

from rhmfast.reference.token_patch_embed import TOKEN_DTYPES


def check_args(rules, owned, tokens, mask, n_classes: int, v: int, weights=None, values: bool = True) -> None:
    """The checks of csrc/rhm_posterior.cpp, with the same words; with ``values`` also those that read the
    data (rule entries, visible tokens), which the fake kernel cannot."""
    if rules.dtype != torch.int32:
        raise TypeError(f"rhmfast: rules must be int32, got {rules.dtype}")
    if rules.dim() != 4:
        raise ValueError(f"rhmfast: rules must have shape [L, R, m, s], got {list(rules.shape)}")
    L, R, m, s = rules.shape
    if not 1 <= L <= 64:
        raise ValueError(f"rhmfast: L must be in [1, 64], got {L}")
    if s < 2:
        raise ValueError(f"rhmfast: s must be >= 2, got {s}")
    if m < 1:
        raise ValueError(f"rhmfast: rules must have m >= 1 rules per symbol, got shape {list(rules.shape)}")
    if n_classes < 1:
        raise ValueError(f"rhmfast: n_classes must be >= 1, got {n_classes}")
    if v < 1:
        raise ValueError(f"rhmfast: v must be >= 1, got {v}")
    if R < max(n_classes, v):
        raise ValueError(f"rhmfast: rules must have R >= max(n_classes, v) = {max(n_classes, v)} rows per level, "
                         f"got shape {list(rules.shape)}")
    if s**L > 1 << 31:
        raise ValueError(f"rhmfast: input length s^L must be <= 2^31, got {s**L}")
    device = rules.device
    if owned.dtype != torch.bool:
        raise TypeError(f"rhmfast: owned must be bool, got {owned.dtype}")
    if tuple(owned.shape) != (L, R):
        raise ValueError(f"rhmfast: owned must have shape [L, R] = [{L}, {R}], got {list(owned.shape)}")
    if owned.device != device:
        raise ValueError(f"rhmfast: owned must be on the rules' device {device}, got {owned.device}")
    if tokens.dtype not in TOKEN_DTYPES:
        raise TypeError(f"rhmfast: tokens must be uint8, int16, int32 or int64, got {tokens.dtype}")
    if tokens.dim() != 2 or tokens.shape[1] != s**L:
        raise ValueError(f"rhmfast: tokens must have shape [B, s^L = {s**L}], got {list(tokens.shape)}")
    if tokens.device != device:
        raise ValueError(f"rhmfast: tokens must be on the rules' device {device}, got {tokens.device}")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"rhmfast: mask must be bool, got {mask.dtype}")
        if mask.shape != tokens.shape:
            raise ValueError(f"rhmfast: mask must have the shape of tokens {list(tokens.shape)}, "
                             f"got {list(mask.shape)}")
        if mask.device != device:
            raise ValueError(f"rhmfast: mask must be on the rules' device {device}, got {mask.device}")
    if weights is not None:
        if weights.dtype != torch.float64:
            raise TypeError(f"rhmfast: weights must be float64, got {weights.dtype}")
        if tuple(weights.shape) != (L, R, m):
            raise ValueError(f"rhmfast: weights must have shape [L, R, m] = [{L}, {R}, {m}], got {list(weights.shape)}")
        if weights.device != device:
            raise ValueError(f"rhmfast: weights must be on the rules' device {device}, got {weights.device}")
    if not values:
        return
    if weights is not None and weights.numel() > 0:
        lo, hi = (float(w) for w in torch.aminmax(weights))
        if not (lo >= 0 and math.isfinite(hi)):
            raise ValueError(f"rhmfast: weights must be finite and >= 0, found values in [{lo:g}, {hi:g}]")
    lo, hi = int(rules.min()), int(rules.max())
    if lo < 0 or hi >= v:
        raise ValueError(f"rhmfast: rules entries must be in [0, v={v}), found values in [{lo}, {hi}]")
    visible = tokens if mask is None else tokens[~mask]
    if visible.numel() > 0:
        lo, hi = (int(t) for t in torch.aminmax(visible))
        if lo < 0 or hi >= v:
            raise ValueError(f"rhmfast: tokens must be in [0, v={v}) at visible positions, got {lo if lo < 0 else hi}")


def _normalise(messages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Messages [..., W] scaled to sum 1 (all-zero ones left zero) and their sums [...]."""
    total = messages.sum(-1)
    return messages / torch.where(total > 0, total, 1.0).unsqueeze(-1), total


def rhm_posterior(rules: torch.Tensor, owned: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None,
                  n_classes: int, v: int, leaves: bool, weights: torch.Tensor | None = None):
    """(posterior [B, n_classes], log_prob [B], leaf_posterior [B, s^L, v] or [0] without leaves), float64.
    weights: float64 [L, R, m], P(rule | symbol), or None for uniform rules."""
    check_args(rules, owned, tokens, mask, n_classes, v, weights)
    L, _, m, s = rules.shape
    B, d = tokens.shape
    device = rules.device
    f64 = dict(dtype=torch.float64, device=device)
    hidden = torch.zeros(B, d, dtype=torch.bool, device=device) if mask is None else mask
    observed = torch.where(hidden, 0, tokens.to(torch.int64))
    one_hot = torch.nn.functional.one_hot(observed, v).to(torch.float64)
    leaf_up = torch.where(hidden.unsqueeze(-1), 1.0, one_hot)  # [B, d, v]

    def level_rules(level: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rule table [W, m, s] of the level's W symbols, whether each owns rules [W] and the rules'
        weights [W, m] (ones for uniform rules: their 1/m per node is taken out of log_prob at the end)."""
        width = n_classes if level == 0 else v
        weight = torch.ones(width, m, **f64) if weights is None else weights[level, :width]
        return rules[level, :width].to(torch.int64), owned[level, :width], weight

    def child_values(level: int, up_below: torch.Tensor) -> list[torch.Tensor]:
        """For each position k, child k's upward message at every rule's k-th symbol: [B, nodes, W, m]."""
        table, _, _ = level_rules(level)
        children = up_below.reshape(B, s**level, s, v)
        return [children[:, :, k, :][..., table[:, :, k]] for k in range(s)]

    up = [None] * (L + 1)  # up[l]: the normalised upward messages of level l, [B, s^l, W]
    up[L] = leaf_up
    log_sum = torch.zeros(B, **f64)
    possible = torch.ones(B, dtype=torch.bool, device=device)
    for level in range(L - 1, -1, -1):
        _, is_owner, weight = level_rules(level)
        messages = (torch.stack(child_values(level, up[level + 1])).prod(0) * weight).sum(-1) * is_owner  # [B, n, W]
        up[level], total = _normalise(messages)
        possible &= (total > 0).all(1)
        log_sum += torch.where(total > 0, total, 1.0).log().sum(1)
    rule_choices = (d - 1) // (s - 1) * math.log(m) if weights is None else 0.0
    log_prob = log_sum - rule_choices - math.log(n_classes)
    log_prob = torch.where(possible, log_prob, -math.inf)
    posterior = torch.where(possible.unsqueeze(1), up[0][:, 0], math.nan)
    if not leaves:
        return posterior, log_prob, torch.empty(0, **f64)

    down = torch.ones(B, 1, n_classes, **f64)  # the uniform label prior, up to a constant
    for level in range(L):
        table, is_owner, rule_weight = level_rules(level)
        values = child_values(level, up[level + 1])
        weight = (down * is_owner).unsqueeze(-1) * rule_weight  # [B, n, W, m]
        nodes = s**level
        children = []
        for k in range(s):
            others = weight * torch.stack([values[j] for j in range(s) if j != k]).prod(0)  # [B, n, W, m]
            child = torch.zeros(B, nodes, v, **f64)
            children.append(child.index_add_(2, table[:, :, k].reshape(-1), others.reshape(B, nodes, -1)))
        down, _ = _normalise(torch.stack(children, 2).reshape(B, nodes * s, v))
    leaf_posterior = torch.where(hidden.unsqueeze(-1), down, one_hot)
    leaf_posterior = torch.where(possible.view(B, 1, 1), leaf_posterior, math.nan)
    return posterior, log_prob, leaf_posterior
