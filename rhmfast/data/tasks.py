"""Tasks on an RHM's strings besides classifying the root: last-token prediction (``LastToken``), the masked
task of the 2024 pcsl-epfl random-hierarchy-model library (``--mode masked``; Cagnetta & Wyart, NeurIPS 2024).

A task is a data object as the trainers read it, like the RHM itself: ``v, s, L`` (the grammar's),
``n_classes`` (the number of targets), ``input_vocab`` (the token ids a model embeds), ``patch_size``,
``input_dim``, and ``split``, ``sample`` and ``batches`` with the RHM's arguments and semantics: it draws the
grammar's samples (the same sample numbers, no randomness of its own) and turns each into an input and a
target. ``make_task(grammar, "classify")`` is the grammar itself.
"""
from __future__ import annotations

from typing import Iterator

import torch

from rhmfast._checks import check_choice, check_int
from rhmfast.data.grammar import RHM

TASKS = ("classify", "last-token")
_TOKEN_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)
_POSTERIOR_BYTES = 1 << 26  # the float64 leaf posterior held at once by target_posterior


def make_task(grammar, task: str = "classify", context: int | None = None):
    """The data object of ``task`` on ``grammar`` (an RHM): the grammar itself for "classify" (the root
    label is the target), ``LastToken(grammar, context)`` for "last-token"."""
    check_choice("task", task, TASKS)
    if task == "classify":
        if context is not None:
            raise ValueError(f"rhmfast: context is an option of task 'last-token', not of 'classify' (the whole "
                             f"string is the input); leave it None, got {context!r}")
        return grammar
    return LastToken(grammar, context)


class LastToken:
    """Last-token prediction on an RHM: the input is the string with its last leaf hidden, the target is
    that leaf's symbol, in [0, v).

    Hidden positions hold the mask id, ``grammar.input_vocab`` (v for the RHM), a token no string holds.
    ``context`` (an int in [1, input_dim], None: input_dim) is the length of the window that ends at the
    last leaf, the hidden leaf included, as the library's ``--num_tokens``: the context - 1 leaves before
    the last one are visible, all earlier positions hold the mask id too. The library crops its input to
    that window (and its hCNN then has depth log_s(num_tokens)) and hides the last leaf with a constant
    vector (its fcn drops it); here the input keeps its length with mask tokens, which carry the same
    information, so a model of the grammar's shape runs at any context.

    Attributes: ``grammar``, ``task`` ("last-token"), ``context``, ``mask_id``; the data interface: ``v, s, L``
    and ``input_dim``, ``patch_size`` (the grammar's), ``n_classes`` = v, ``input_vocab`` = mask_id + 1.
    The sparse RHM is refused: its last leaf is mostly the blank token, and neither the paper nor the
    library defines its last-token task.
    """

    task = "last-token"

    def __init__(self, grammar, context: int | None = None):
        if not isinstance(grammar, RHM):
            raise TypeError(f"rhmfast: LastToken needs an rhmfast.RHM, got {type(grammar).__name__}")
        if grammar.sparsity:
            raise ValueError(f"rhmfast: task 'last-token' is not defined for the sparse RHM (sparsity = "
                             f"{grammar.sparsity}: its last leaf is mostly blank); use sparsity 0 or task 'classify'")
        self.grammar = grammar
        self.v, self.s, self.L = grammar.v, grammar.s, grammar.L
        self.input_dim = grammar.input_dim
        self.patch_size = grammar.patch_size
        self.mask_id = grammar.input_vocab
        self.input_vocab = self.mask_id + 1
        self.n_classes = grammar.v
        self.context = self.input_dim if context is None else check_int("context", context, 1, self.input_dim)
        hidden = torch.ones(self.input_dim, dtype=torch.bool)
        hidden[self.input_dim - self.context:-1] = False
        self.hidden = hidden  # bool [input_dim], True where the input holds the mask id

    def __repr__(self) -> str:
        return f"LastToken({self.grammar!r}, context={self.context})"

    def _dtype(self, dtype) -> torch.dtype:
        """The token dtype: the smallest that holds the mask id, or the one given, checked."""
        if dtype is None:
            return next(d for d in _TOKEN_DTYPES if self.mask_id <= torch.iinfo(d).max)
        if dtype not in _TOKEN_DTYPES:
            raise TypeError(f"rhmfast: dtype must be one of uint8, int16, int32, int64, got {dtype}")
        if self.mask_id > torch.iinfo(dtype).max:
            raise ValueError(f"rhmfast: dtype {dtype} cannot hold the mask id {self.mask_id} "
                             f"(max {torch.iinfo(dtype).max})")
        return dtype

    def _masked(self, sample) -> tuple[torch.Tensor, torch.Tensor]:
        """A grammar sample (tokens, root labels) as (input, target): the last leaf's symbol is the target."""
        tokens = sample[0]
        return tokens.masked_fill(self.hidden.to(tokens.device), self.mask_id), tokens[:, -1].to(torch.int64)

    def sample(self, n: int, *, seed: int = 0, start: int = 0, mode: str = "iid", device="cpu",
               dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``start .. start+n-1`` of the grammar's stream ``(seed, mode)`` (``RHM.sample``) as
        ``(inputs [n, input_dim], targets [n] int64)``."""
        return self._masked(self.grammar.sample(n, seed=seed, start=start, mode=mode, device=device,
                                                dtype=self._dtype(dtype)))

    def split(self, n_train: int, n_test: int, seed: int = 0, *, device="cpu", dtype: torch.dtype | None = None,
              **options):
        """The grammar's training and test sets (``RHM.split``; options: its order, replacement, shard) as
        ``((x_train, y_train), (x_test, y_test))`` of inputs and targets."""
        if "return_tree" in options:
            raise ValueError("rhmfast: LastToken.split has no return_tree: the latent tree belongs to the grammar "
                             "(grammar.split(return_tree=True) gives it)")
        parts = self.grammar.split(n_train, n_test, seed, device=device, dtype=self._dtype(dtype), **options)
        return tuple(self._masked(part) for part in parts)

    def batches(self, batch_size: int, seed: int = 0, *, start: int = 0, mode: str = "iid", device="cpu",
                dtype: torch.dtype | None = None) -> Iterator:
        """The grammar's fresh batches (``RHM.batches``: batch k holds samples start + k*batch_size ...) as
        (inputs, targets)."""
        stream = self.grammar.batches(batch_size, seed, start=start, mode=mode, device=device,
                                      dtype=self._dtype(dtype))
        return (self._masked(batch) for batch in stream)

    # ---- the Bayes-optimal predictor -------------------------------------------------------------

    def target_posterior(self, inputs: torch.Tensor) -> torch.Tensor:
        """P(last leaf = t | the visible leaves), float64 [B, v], exact (belief propagation on the tree,
        ``RHM.leaf_posterior``), for inputs [B, input_dim] of this task (the mask id at every hidden
        position). A ValueError for inputs without the mask where it belongs, or whose visible leaves the
        grammar cannot produce."""
        if not isinstance(inputs, torch.Tensor) or inputs.dtype not in _TOKEN_DTYPES:
            found = inputs.dtype if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise TypeError(f"rhmfast: inputs must be an integer tensor [B, {self.input_dim}] (uint8, int16, int32 "
                            f"or int64), got {found}")
        if inputs.dim() != 2 or inputs.shape[1] != self.input_dim:
            raise ValueError(f"rhmfast: inputs must have shape [B, {self.input_dim}], got {list(inputs.shape)}")
        hidden = self.hidden.to(inputs.device)
        if bool((inputs[:, hidden] != self.mask_id).any()):
            raise ValueError(f"rhmfast: inputs must hold the mask id {self.mask_id} at every hidden position (the "
                             f"last leaf and the {self.input_dim - self.context} before the context): pass this "
                             "task's inputs, not the grammar's strings")
        chunk = max(1, _POSTERIOR_BYTES // (8 * self.input_dim * self.v))
        out = []
        for lo in range(0, inputs.shape[0], chunk):
            part = inputs[lo:lo + chunk]
            mask = hidden.expand(part.shape[0], -1)
            out.append(self.grammar.leaf_posterior(part, mask)[:, -1])
        posterior = torch.cat(out) if out else torch.zeros(0, self.v, dtype=torch.float64, device=inputs.device)
        if bool(posterior.isnan().any()):
            raise ValueError("rhmfast: some inputs hold visible leaves the grammar cannot produce: no posterior")
        return posterior

    def bayes_predictions(self, inputs: torch.Tensor) -> torch.Tensor:
        """The Bayes-optimal prediction of the last leaf, int64 [B]: the most probable symbol given the visible
        leaves."""
        return self.target_posterior(inputs).argmax(1)

    def bayes_error(self, inputs: torch.Tensor) -> float:
        """The Bayes-optimal error on these inputs: the mean over them of 1 - max_t P(last leaf = t | visible
        leaves), the error the best predictor makes in expectation (NaN for no inputs)."""
        posterior = self.target_posterior(inputs)
        if posterior.shape[0] == 0:
            return float("nan")
        return float((1.0 - posterior.max(1).values).mean())
