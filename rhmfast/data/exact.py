"""Exact statistics of an RHM computed from its rules (Cagnetta et al. 2024), for tests and diagnostics."""
from __future__ import annotations

import math

import torch

from rhmfast.data import variants

COLLISION_DISTANCE = 1e-12  # label posteriors closer than this count as identical (float64 rounding is ~1e-16)


class ExactStatistics:
    """Available as ``grammar.exact``. Levels count from the root: level 0 holds the label. The rules are
    weighted by their probabilities (``grammar.rule_probs()``; 1/m for uniform productions) and the label
    is uniform. A sparse grammar's statistics are those of its dense strings (the slots are independent of
    the symbols)."""

    def __init__(self, grammar):
        self._g = grammar

    def n_symbols(self, level: int) -> int:
        return self._g.n_classes if level == 0 else self._g.v

    def transition(self, level: int) -> torch.Tensor:
        """First-token transition matrix of level ``level`` -> ``level + 1``, float64
        [n_symbols(level), v]: entry (a, b) = the probability of the rules of a whose first child is b
        (#{such rules} / m for uniform productions). Rows of symbols that own no rules (possible with
        pcsl-2023) are zero."""
        g = self._g
        if not 0 <= level < g.L:
            raise ValueError(f"level must be in [0, L-1 = {g.L - 1}], got {level}")
        matrix = torch.zeros(self.n_symbols(level), g.v, dtype=torch.float64)
        rows = g.parents[level].unsqueeze(1).expand(-1, g.m)
        matrix.index_put_((rows.reshape(-1), g.rules[level][:, :, 0].reshape(-1)),
                          self._rule_law(level).expand(rows.shape).reshape(-1), accumulate=True)
        return matrix

    def _rule_law(self, level: int) -> torch.Tensor:
        """float64 [m]: the probability of each rule index at this level (every symbol has the same law)."""
        return variants.level_probabilities(self._g)[level]

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
        posterior, _ = self._parent_posterior(self.first_symbol_law(level - 1), level)
        return posterior.unsqueeze(1).expand(-1, g.m, -1).contiguous()

    def _parent_posterior(self, law: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """From the law of (label, first symbol of level - 1): the label posterior of each parent of
        rules[level - 1] [n_parents, n_classes] (NaN rows for parents never first) and the probability that
        each parent stands first [n_parents]."""
        joint = law[:, self._g.parents[level - 1]]  # [n_classes, n_parents]
        total = joint.sum(0, keepdim=True)
        posterior = torch.where(total > 0, joint / total.clamp_min(1e-300), torch.full_like(joint, float("nan")))
        return posterior.t(), total.squeeze(0)

    # ---- Ren et al.'s Assumption 6 -------------------------------------------------------------

    def assumption_check(self) -> list[dict]:
        """Ren et al.'s Assumption 6, exactly, one dict per level l = 1 .. L (patches of level l are the
        rules of level l - 1, their parents the symbols of level l - 1 that own rules):

        - ``rho``: the smallest L2 distance between the label posteriors q^(l) of two distinct parents
          that can stand first (synonyms share q); ``math.inf`` with fewer than two such parents;
        - ``K_rho``: rho * m^(l/2), the constant of part (b);
        - ``collisions``: pairs of such parents whose posteriors are closer than 1e-12 (part (b) fails);
        - ``never_first``: patches that never stand first (part (a) fails): those of parents that never
          stand first and, with Zipf productions, those of rules of probability 0 (zipf_exponent = inf);
        - ``kappa``: 1 / (|P_l| * min over patches of P[first level-l patch = mu]), |P_l| = n_parents * m;
          ``math.inf`` when never_first > 0.
        """
        return list(self._assumption_levels())

    def _assumption_levels(self):
        """The dicts of assumption_check, level by level (lazily: satisfies_assumption stops at the first
        level that fails)."""
        g = self._g
        law = self.first_symbol_law(0)
        for level in range(1, g.L + 1):
            posterior, first = self._parent_posterior(law, level)
            q = posterior[first > 0]
            # Direct differences, not the matrix-product shortcut (its rounding, ~1e-8, would hide collisions);
            # each unordered pair once: the strict upper triangle.
            first_of_pair, second_of_pair = torch.triu_indices(len(q), len(q), offset=1)
            distances = torch.cdist(q, q, compute_mode="donot_use_mm_for_euclid_dist")[first_of_pair, second_of_pair]
            rho = float(distances.min()) if distances.numel() else math.inf
            rule_law = self._rule_law(level - 1)
            never_first = int((first == 0).sum()) * g.m + int((first > 0).sum()) * int((rule_law == 0).sum())
            # The least likely patch is the least likely rule of the least likely parent; m * (1/m) is not
            # always exactly 1 in floating point, so the uniform case keeps its exact form.
            least_rule = 1.0 if g.production == "uniform" else g.m * float(rule_law.min())
            kappa = math.inf if never_first else 1.0 / (len(first) * float(first.min()) * least_rule)
            yield dict(level=level, rho=rho, K_rho=rho * g.m ** (level / 2),
                       collisions=int((distances < COLLISION_DISTANCE).sum()), never_first=never_first, kappa=kappa)
            if level < g.L:
                law = law @ self.transition(level - 1)

    def satisfies_assumption(self) -> bool:
        """Whether both parts of Assumption 6 hold: every patch of every level can stand first (a), and no
        two non-synonyms of a level share a label posterior (b)."""
        return all(row["never_first"] == 0 and row["collisions"] == 0 for row in self._assumption_levels())

    def assumption_summary(self) -> str:
        """One line: "Assumption 6 holds: K_rho >= X (level l), kappa <= Y", or which part fails at which
        levels."""
        levels = self.assumption_check()
        never = [f"level {r['level']}: {_count(r['never_first'], 'patch', 'patches')} never stand"
                 f"{'s' if r['never_first'] == 1 else ''} first" for r in levels if r["never_first"]]
        same = [f"level {r['level']}: {_count(r['collisions'], 'pair', 'pairs')} of non-synonyms with identical "
                "posteriors (K_rho = 0)" for r in levels if r["collisions"]]
        if never or same:
            parts = ([f"(a) {', '.join(never)}"] if never else []) + ([f"(b) {', '.join(same)}"] if same else [])
            return f"Assumption 6 fails: {'; '.join(parts)}"
        weakest = min(levels, key=lambda r: r["K_rho"])
        return (f"Assumption 6 holds: K_rho >= {weakest['K_rho']:.4g} (level {weakest['level']}), "
                f"kappa <= {max(r['kappa'] for r in levels):.4g}")


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"
