"""Exact statistics of an RHM computed from its rules (Cagnetta et al. 2024), for tests and diagnostics."""
from __future__ import annotations

import torch


class ExactStatistics:
    """Available as ``grammar.exact``. Levels count from the root: level 0 holds the label."""

    def __init__(self, grammar):
        self._g = grammar

    def n_symbols(self, level: int) -> int:
        return self._g.n_classes if level == 0 else self._g.v

    def transition(self, level: int) -> torch.Tensor:
        """First-token transition matrix of level ``level`` -> ``level + 1``, float64
        [n_symbols(level), v]: entry (a, b) = #{rules of a whose first child is b} / m. Rows of
        symbols that own no rules (possible with pcsl-2023) are zero."""
        g = self._g
        if not 0 <= level < g.L:
            raise ValueError(f"level must be in [0, L-1 = {g.L - 1}], got {level}")
        matrix = torch.zeros(self.n_symbols(level), g.v, dtype=torch.float64)
        rows = g.parents[level].unsqueeze(1).expand(-1, g.m)
        matrix.index_put_((rows.reshape(-1), g.rules[level][:, :, 0].reshape(-1)),
                          torch.full((rows.numel(),), 1.0 / g.m, dtype=torch.float64), accumulate=True)
        return matrix

    def first_symbol_law(self, level: int) -> torch.Tensor:
        """Joint law of (label, first symbol of level ``level``), float64 [n_classes, n_symbols(level)]:
        D_0 · T_0 ⋯ T_{level-1} with D_0 the uniform label prior."""
        g = self._g
        if not 0 <= level <= g.L:
            raise ValueError(f"level must be in [0, L = {g.L}], got {level}")
        law = torch.eye(g.n_classes, dtype=torch.float64) / g.n_classes
        for k in range(level):
            law = law @ self.transition(k)
        return law

    def label_posterior(self, level: int) -> torch.Tensor:
        """q^(level)_mu = P(label | first level-``level`` patch = mu) for every patch mu of the grammar,
        float64 [n_parents, m, n_classes] aligned with ``rules[level - 1]`` (1 <= level <= L).

        A patch has a single parent nu (the grammar is unambiguous), so q_mu is the label posterior given
        that the first symbol of level - 1 is nu: synonyms share it. Patches whose parent never stands
        first in its level have no posterior (NaN rows)."""
        g = self._g
        if not 1 <= level <= g.L:
            raise ValueError(f"level must be in [1, L = {g.L}], got {level}")
        joint = self.first_symbol_law(level - 1)[:, g.parents[level - 1]]  # [n_classes, n_parents]
        total = joint.sum(0, keepdim=True)
        posterior = torch.where(total > 0, joint / total.clamp_min(1e-300), torch.full_like(joint, float("nan")))
        return posterior.t().unsqueeze(1).expand(-1, g.m, -1).contiguous()
