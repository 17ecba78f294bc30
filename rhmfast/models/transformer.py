"""The transformers of the RHM literature, on token ids [B, d]: the attention-only network of the 2024 reference
library (``AttentionOnly``, its ``MLA``, ``--model transformer_mla``) and the pre-LayerNorm encoder of Cagnetta &
Wyart's NeurIPS 2024 code (``Encoder``, its ``BERTuccia``, ``--model transformer_bert``).

Facts about the references are from models/transformer.py, models/fcn.py, init.py and main.py at HEAD of
github.com/pcsl-epfl/random-hierarchy-model and github.com/fracagnetta/theory-language-modelling (whose MLA is the
library's, line for line); the code here is rhmfast's own.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from rhmfast._checks import check_positive_int, check_seed, check_tokens
from rhmfast.models._common import seeded_generator
from rhmfast.models._reference import check_keys, check_shape, reference_state


class _SelfAttention(nn.Module):
    """The references' MultiHeadAttention with head_dim = E / heads: weights ``key``, ``query``, ``value``,
    ``projection`` [E, E] ~ N(0, 1) (drawn in that order); q, k and v each divided by sqrt(E), scores
    q k^T / sqrt(head_dim), softmax over the keys, the projected output divided by sqrt(E)."""

    def __init__(self, dim: int, heads: int, gen: torch.Generator | None):
        super().__init__()
        self.heads = heads
        self.key = nn.Parameter(torch.randn(dim, dim, generator=gen))
        self.query = nn.Parameter(torch.randn(dim, dim, generator=gen))
        self.value = nn.Parameter(torch.randn(dim, dim, generator=gen))
        self.projection = nn.Parameter(torch.randn(dim, dim, generator=gen))

    def forward(self, x: torch.Tensor, last: bool = False, index: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, E] -> [B, T, E]; last=True: only the last position's output [B, 1, E]. With index [B, T], x is
        a table [R, E] of the distinct inputs, position t of sample b holding row index[b, t]: the products are
        computed once per row and then gathered."""
        if index is not None and last:
            x, index = F.embedding(index, x), None
        B, T, E = x.shape if index is None else (*index.shape, x.shape[1])
        h, dh = self.heads, E // self.heads
        # (q / sqrt(E)) (k / sqrt(E))^T / sqrt(dh) is one scale on the scores; v's 1/sqrt(E) and the
        # projection's 1/sqrt(E) commute with the (linear) attention and join after the projection.
        scale = 1.0 / (E * math.sqrt(dh))
        if last:
            # One query: fold each head's key weight into it, q_h . (Wk_h x_t) = (Wk_h^T q_h) . x_t, attend over
            # the inputs themselves (the h heads as h query rows of one head), then apply each head's value
            # weight to its weighted sum of the inputs. O(B E^2) work instead of O(B T E^2) for keys and values.
            q = F.linear(x[:, -1], self.query).view(B, h, dh)
            folded = torch.einsum("bhd,hde->bhe", q, self.key.view(h, dh, E)).unsqueeze(1)  # [B, 1, h, E]
            inputs = x.unsqueeze(1)  # [B, 1, T, E]
            summed = F.scaled_dot_product_attention(folded, inputs, inputs, scale=scale).squeeze(1)  # [B, h, E]
            out = torch.einsum("bhe,hde->bhd", summed, self.value.view(h, dh, E)).reshape(B, 1, E)
        else:
            # Separate products (not one on the concatenated weights): SDPA's backward then writes each
            # gradient in its input's [B, T, h, dh] layout, and no copy is needed before the weight gradients.
            q, k, v = ((F.linear(x, w) if index is None else F.embedding(index, F.linear(x, w)))
                       .view(B, T, h, dh).transpose(1, 2) for w in (self.query, self.key, self.value))
            out = F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2).reshape(B, T, E)
        return F.linear(out, self.projection) * (1.0 / E)


class _AttentionBlock(nn.Module):
    """AttentionOnly's block: self-attention alone (no residual, no LayerNorm, no MLP)."""

    def __init__(self, dim: int, heads: int, gen: torch.Generator | None):
        super().__init__()
        self.sa = _SelfAttention(dim, heads, gen)

    def forward(self, x: torch.Tensor, last: bool = False, index: torch.Tensor | None = None) -> torch.Tensor:
        return self.sa(x, last, index)


class _Feedforward(nn.Module):
    """The encoder's MLP, the references' fcn MLP with one hidden layer, no bias and norm "std":
    relu(x W^T / sqrt(E)) R / sqrt(F), ``hidden`` W [F, E] and ``readout`` R [F, E] ~ N(0, 1), F = ffwd_size * E."""

    def __init__(self, dim: int, ffwd_size: int, gen: torch.Generator | None):
        super().__init__()
        self.hidden = nn.Parameter(torch.randn(ffwd_size * dim, dim, generator=gen))
        self.readout = nn.Parameter(torch.randn(ffwd_size * dim, dim, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # relu(a z) = a relu(z) for a > 0: both scales applied once, on the [B, T, E] output
        scale = 1.0 / math.sqrt(self.hidden.shape[1] * self.hidden.shape[0])
        return F.relu(F.linear(x, self.hidden)) @ self.readout * scale


class _EncoderBlock(nn.Module):
    """Encoder's block: x + attention(LN1(x)), then x + MLP(LN2(x)) (nn.LayerNorm, eps 1e-5, affine)."""

    def __init__(self, dim: int, heads: int, ffwd_size: int, gen: torch.Generator | None):
        super().__init__()
        self.sa = _SelfAttention(dim, heads, gen)
        self.ffwd = _Feedforward(dim, ffwd_size, gen)
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, last: bool = False, index: torch.Tensor | None = None) -> torch.Tensor:
        """As _SelfAttention's (index: x a table of the distinct inputs; LN1 is taken once per row)."""
        attended = self.sa(self.ln1(x), last, index)
        if index is not None:
            x = F.embedding(index, x)
        x = (x[:, -1:] if last else x) + attended
        return x + self.ffwd(self.ln2(x))


class _TokenTransformer(nn.Module):
    """What both transformers share: the checks, the embeddings, the read-out at the last position, the
    reference's recipe and its state dicts."""

    lr_scale = 1.0  # the references multiply the learning rate by the width for the fcn and CNNs, not here

    def __init__(self, v: int, d: int, n_classes: int, embedding_dim: int, heads: int, layers: int,
                 seed: int | None, make_block):
        super().__init__()
        for name, value in (("v", v), ("d", d), ("n_classes", n_classes), ("embedding_dim", embedding_dim),
                            ("heads", heads), ("layers", layers)):
            check_positive_int(name, value)
        if embedding_dim % heads:
            raise ValueError(f"rhmfast: heads must divide embedding_dim={embedding_dim} (head dim = embedding_dim / "
                             f"heads), got heads={heads}")
        self.v, self.d, self.n_classes = v, d, n_classes
        self.embedding_dim, self.heads, self.layers = embedding_dim, heads, layers
        self.seed = check_seed("seed", seed)
        gen = seeded_generator(seed)
        # The reference's order of draws, so that seed=k gives its weights after torch.manual_seed(k)
        self.token_embedding = nn.Parameter(torch.randn(embedding_dim, v, generator=gen))
        self.position_embedding = nn.Embedding.from_pretrained(torch.randn(d, embedding_dim, generator=gen),
                                                               freeze=False)
        self.blocks = nn.ModuleList(make_block(gen) for _ in range(layers))
        self.readout = nn.Parameter(torch.randn(n_classes, embedding_dim, generator=gen))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token plus position embeddings [B, d, E]: column t of ``token_embedding`` [E, v] divided by sqrt(v)
        (the reference's one-hot input times it, scaled by 1/sqrt(v)), plus row p of ``position_embedding``.
        The ids are not checked here (forward checks them)."""
        return F.embedding(tokens.long(), self._token_vectors()) + self.position_embedding.weight

    def embedding_table(self) -> torch.Tensor:
        """Every input vector there can be, [v * d, E]: row t * d + p is token t at position p (embed's sum)."""
        table = self._token_vectors().unsqueeze(1) + self.position_embedding.weight
        return table.reshape(self.v * self.d, self.embedding_dim)

    def _token_vectors(self) -> torch.Tensor:
        return (self.token_embedding * self.v**-0.5).t()  # [v, E]

    def read(self, last: torch.Tensor) -> torch.Tensor:
        """Logits [B, n_classes] of the last position's vector [B, E]: ``readout`` [n_classes, E] / sqrt(E)."""
        return F.linear(last, self.readout) * self.embedding_dim**-0.5

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, n_classes] of token ids [B, d] (an integer dtype, ids in [0, v)).

        The same function, less work: only the last position is read out, so the last block computes its
        output there alone; and with more samples than tokens (B > v) the first block computes its products
        once for each of the v * d possible inputs and gathers them (a first-layer look-up)."""
        check_tokens(type(self).__name__, tokens, self.v, self.d, f"d={self.d}")
        index = None
        if tokens.shape[0] > self.v:
            x = self.embedding_table()
            index = tokens.long() * self.d + torch.arange(self.d, device=tokens.device)
        else:
            x = self.embed(tokens)
        for i, block in enumerate(self.blocks):
            x = block(x, last=i == self.layers - 1, index=index if i == 0 else None)
        return self.read(x[:, -1])

    @classmethod
    def reference_recipe(cls) -> dict:
        """train_sgd's keyword arguments for the references' defaults (both codes' main.py and init.py, which
        agree): ``--optim sgd`` (torch SGD), ``--lr 0.1`` (not multiplied by a width for transformers: lr_scale
        1), ``--momentum 0.9``, no weight decay (neither code passes one, nor has AdamW), ``--scheduler None``
        (a constant rate), ``--max_epochs 100``, ``--loss_threshold 1e-3`` checked at the print checkpoints of
        ``--print_freq 10`` (``reference_checkpoints(10, 100, fill=True)``), an epoch-0 evaluation, and the
        library's data order. ``--batch_size`` has no default there: pass it (train_sgd's default is 128).
        The other optimizer there is ``--optim adam``: torch Adam with its default betas and no weight decay
        (train_sgd's optimizer="adam"); its other schedules, ``--scheduler cosine`` / ``warmup`` with
        ``--scheduler_time``, are train_sgd's scheduler and scheduler_time."""
        from rhmfast.train.loop import reference_checkpoints  # here: rhmfast.train imports rhmfast.models

        return dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.0, scheduler=None, max_epochs=100,
                    loss_threshold=1e-3, eval_every=reference_checkpoints(10, 100, fill=True), stop_check="eval",
                    eval_at_start=True, order="pcsl")

    def reference_key(self, key: str) -> str:
        """The reference model's state-dict key of this model's ``key`` (the same, unless a subclass says)."""
        return key

    def load_reference_state_dict(self, model_or_state_dict) -> None:
        """Copies the weights of the reference model (the module, or its state dict: e.g. ``init`` or ``model``
        of its main.py's output) into this one. Its keys and shapes must be this model's (``reference_key``);
        the reference's read-out has v rows, so n_classes must be v. Nothing is copied unless all match."""
        owner = f"{type(self).__name__}.load_reference_state_dict"
        state, _ = reference_state(model_or_state_dict, owner)
        mine = self.state_dict()
        theirs = {self.reference_key(key): key for key in mine}
        check_keys(state, list(theirs), owner)
        for key, own in theirs.items():
            check_shape(state, key, mine[own].shape, owner)
        with torch.no_grad():
            for key, own in theirs.items():
                mine[own].copy_(state[key])

    def extra_repr(self) -> str:
        return (f"v={self.v}, d={self.d}, n_classes={self.n_classes}, embedding_dim={self.embedding_dim}, "
                f"heads={self.heads}, layers={self.layers}")


class AttentionOnly(_TokenTransformer):
    """The 2024 library's multi-layer attention-only network (``MLA``; its arguments vocab_size = v,
    block_size = d, embedding_dim, num_heads = heads, num_layers = layers, and n_classes = v, since its
    read-out has vocab_size rows), on token ids [B, d]:

    x = token embedding + position embedding; x = attention(x) for each of the layers, with no residual, no
    LayerNorm and no MLP; logits = readout x[:, -1] / sqrt(E) (the last position alone).

    Every weight is N(0, 1) and the scalings are the reference's: the token embedding ``token_embedding``
    [E, v] divided by sqrt(v) (one-hot input times it, over sqrt(v)), the position embedding
    ``position_embedding`` [d, E] (an nn.Embedding) not scaled; in each block (``blocks.{l}.sa``) the weights
    ``key``, ``query``, ``value``, ``projection`` [E, E], q, k and v divided by sqrt(E), the scores
    q k^T / sqrt(E / heads) through a softmax (``scaled_dot_product_attention``), the projection divided by
    sqrt(E); the read-out ``readout`` [n_classes, E] divided by sqrt(E). The draws follow the reference's
    order, so ``seed=k`` gives (on the CPU, n_classes = v) the weights its init.py draws after
    ``torch.manual_seed(k)`` (``--seed_model k``); ``seed=None`` draws from torch's global generator. The
    state dict's keys are the reference's (``load_reference_state_dict`` reads its checkpoints).

    Masked tasks: the reference replaces a hidden token by the fixed vector ones(v) / sqrt(v) (whose
    embedding is the mean of the token embeddings); here a mask is a token id of its own (v - 1 of a
    vocabulary that counts it), with its own learned embedding. The reference's ``--whitening`` is not
    offered (its default is 0). ``reference_recipe()`` gives its training defaults.
    """

    def __init__(self, v: int, d: int, n_classes: int, embedding_dim: int, heads: int, layers: int,
                 seed: int | None = None):
        super().__init__(v, d, n_classes, embedding_dim, heads, layers, seed,
                         lambda gen: _AttentionBlock(embedding_dim, heads, gen))


class Encoder(_TokenTransformer):
    """The NeurIPS 2024 code's pre-LayerNorm transformer encoder (``BERTuccia``; arguments as AttentionOnly's,
    plus ``ffwd_size``, the EncoderBlock's: the MLP has ffwd_size * E hidden units), on token ids [B, d]:

    x = token embedding + position embedding (as AttentionOnly's); for each of the layers,
    x = x + attention(LN1(x)), x = x + MLP(LN2(x)); logits = readout LN_f(x[:, -1]) / sqrt(E). Its main.py
    trains it, as the MLA, to predict the label (the root, or with ``--mode masked`` the hidden last token)
    from the last position.

    Attention (``blocks.{l}.sa``) is AttentionOnly's; the MLP (``blocks.{l}.ffwd``) is the references' fcn
    MLP with one hidden layer, no bias and the "std" read-out: relu(x W^T / sqrt(E)) R / sqrt(ffwd_size E),
    ``hidden`` W and ``readout`` R [ffwd_size E, E] ~ N(0, 1); the LayerNorms ``ln1``, ``ln2``, ``ln_f`` are
    nn.LayerNorm (weight 1, bias 0, eps 1e-5). ``seed=k`` gives the reference's weights after
    ``torch.manual_seed(k)`` (CPU, n_classes = v). The state dict's keys are the reference's but for
    ``blocks.{l}.ffwd.hidden``, its ``blocks.{l}.ffwd.hidden.0.0.weight`` (``load_reference_state_dict``
    renames it). Masked tasks and whitening: as AttentionOnly's.
    """

    def __init__(self, v: int, d: int, n_classes: int, embedding_dim: int, heads: int, layers: int,
                 ffwd_size: int = 4, seed: int | None = None):
        check_positive_int("ffwd_size", ffwd_size)
        super().__init__(v, d, n_classes, embedding_dim, heads, layers, seed,
                         lambda gen: _EncoderBlock(embedding_dim, heads, ffwd_size, gen))
        self.ffwd_size = ffwd_size
        self.ln_f = nn.LayerNorm(embedding_dim)  # deterministic: the draws' order is unchanged

    def read(self, last: torch.Tensor) -> torch.Tensor:
        return super().read(self.ln_f(last))

    def reference_key(self, key: str) -> str:
        return re.sub(r"^(blocks\.\d+\.ffwd\.hidden)$", r"\1.0.0.weight", key)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ffwd_size={self.ffwd_size}"
