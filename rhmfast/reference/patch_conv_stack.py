"""Pure-PyTorch reference of ``patch_conv_stack``: an hCNN trunk, a token layer then patch layers.

Returns every layer's output (layer l's output is layer l+1's input), channels-last [B, T/s^(l+1), C_l].
biases is empty (no biases) or one per layer; scales has one entry per layer.

Replica form (tokens [K, B, T], table [K, s, v, C_0], weights[l] [K, C_{l+1}, s*C_l], biases[l] [K, C_l]):
K independent trunks, every output [K, B, T/s^(l+1), C_l]; the form is the token layer's, and weights and
biases that do not follow it raise ValueError naming them.
"""
from __future__ import annotations

from rhmfast.reference.patch_conv import check_activation, patch_conv
from rhmfast.reference.token_patch_embed import check_token_patch_embed_args, token_patch_embed


def check_stack_args(weights, biases, scales, tokens=None, table=None, patch_size=None) -> None:
    """List lengths; with tokens, table and patch_size also the form (solo or replica) of every weight and
    bias (dims and K; the per-layer checks see the rest)."""
    layers = len(weights) + 1
    if len(biases) not in (0, layers):
        raise ValueError(f"rhmfast: biases must be empty or one per layer ({layers}), got {len(biases)}")
    if len(scales) != layers:
        raise ValueError(f"rhmfast: scales must have one entry per layer ({layers}), got {len(scales)}")
    if table is None:
        return
    if not (tokens.dim() == 3 or table.dim() == 4):
        for l, w in enumerate(weights):
            if w.dim() != 2:
                raise ValueError(f"rhmfast: weights[{l}] must have shape [C_{l + 1}, patch_size*C_{l}] (solo form, "
                                 f"as table is [patch_size, vocab_size, C_0]), got {list(w.shape)}")
        for l, b in enumerate(biases):
            if b.dim() != 1:
                raise ValueError(f"rhmfast: biases[{l}] must have shape [C_{l}] (solo form, as table is "
                                 f"[patch_size, vocab_size, C_0]), got {list(b.shape)}")
        return
    replicas = check_token_patch_embed_args(tokens, table, None, None, patch_size, with_replicas=True)[0]
    for name, tensors, shape, dims in (("weights", weights, "[K, C_{l1}, patch_size*C_{l}]", 3),
                                       ("biases", biases, "[K, C_{l}]", 2)):
        for l, t in enumerate(tensors):
            if t.dim() != dims:
                raise ValueError(f"rhmfast: {name}[{l}] must have shape {shape.format(l=l, l1=l + 1)} (replica "
                                 f"form, as table is [K, patch_size, vocab_size, C_0]), got {list(t.shape)}")
            if t.shape[0] != replicas:
                raise ValueError(f"rhmfast: {name}[{l}] has K={t.shape[0]} replicas but table has K={replicas}: the "
                                 "replica dim (dim 0) must agree")


def patch_conv_stack(tokens, table, weights, biases, *, patch_size: int, scales, activation: str = "relu"):
    check_activation(activation)
    check_stack_args(weights, biases, scales, tokens, table, patch_size)
    bias = list(biases) if biases else [None] * (len(weights) + 1)
    outs = [token_patch_embed(tokens, table, bias[0], patch_size=patch_size, scale=scales[0], activation=activation)]
    for l, weight in enumerate(weights):
        outs.append(patch_conv(outs[-1], weight, bias[l + 1], patch_size=patch_size, scale=scales[l + 1],
                               activation=activation))
    return outs
