"""Python entry point of the ``rhm_posterior`` op: exact belief propagation on the RHM tree (layout contract
in csrc/rhm_posterior.h). The call goes to the compiled kernel for the tokens' device when the extension
is loaded (see rhmfast._backend) and to the pure-PyTorch reference otherwise; the two agree to float64
rounding. The fake kernel lets torch.compile trace through the op. The outputs are probabilities of
integer data: there is nothing to differentiate, so the op has no autograd formula.
"""
from __future__ import annotations

import torch

from rhmfast.ops._kernels import op_registered, use_kernel
from rhmfast.reference import rhm_posterior as reference

_REGISTERED = op_registered("rhm_posterior")


def rhm_posterior(rules: torch.Tensor, owned: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None,
                  n_classes: int, v: int, leaves: bool, weights: torch.Tensor | None = None):
    """(posterior [B, n_classes], log_prob [B], leaf_posterior [B, s^L, v] or [0] when not ``leaves``),
    float64, for tokens [B, s^L] with hidden positions mask [B, s^L] (True = hidden; None: all visible).
    rules: the int32 [L, R, m, s] table of ``RHM.table()``; owned: bool [L, R], which symbols own rules;
    weights: float64 [L, R, m], P(rule | symbol) (``RHM.rule_probs()``), or None for uniform rules."""
    if use_kernel(_REGISTERED, tokens):
        return torch.ops.rhmfast.rhm_posterior(rules, owned, tokens, mask, n_classes, v, leaves, weights)
    return reference.rhm_posterior(rules, owned, tokens, mask, n_classes, v, leaves, weights)


if _REGISTERED:

    @torch.library.register_fake("rhmfast::rhm_posterior")
    def _(rules, owned, tokens, mask, n_classes, v, leaves, weights=None):
        reference.check_args(rules, owned, tokens, mask, n_classes, v, weights, values=False)
        batch, d = tokens.shape
        new = dict(dtype=torch.float64, device=tokens.device)
        leaf = tokens.new_empty((batch, d, v), **new) if leaves else tokens.new_empty((0,), **new)
        return tokens.new_empty((batch, n_classes), **new), tokens.new_empty((batch,), **new), leaf
