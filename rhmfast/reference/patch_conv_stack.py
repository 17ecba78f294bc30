"""Pure-PyTorch reference of ``patch_conv_stack``: an hCNN trunk, a token layer then patch layers.

Returns every layer's output (layer l's output is layer l+1's input), channels-last [B, T/s^(l+1), C_l].
biases is empty (no biases) or one per layer; scales has one entry per layer.
"""
from __future__ import annotations

from rhmfast.reference.patch_conv import check_activation, patch_conv
from rhmfast.reference.token_patch_embed import token_patch_embed


def check_stack_args(weights, biases, scales) -> None:
    layers = len(weights) + 1
    if len(biases) not in (0, layers):
        raise ValueError(f"rhmfast: biases must be empty or one per layer ({layers}), got {len(biases)}")
    if len(scales) != layers:
        raise ValueError(f"rhmfast: scales must have one entry per layer ({layers}), got {len(scales)}")


def patch_conv_stack(tokens, table, weights, biases, *, patch_size: int, scales, activation: str = "relu"):
    check_activation(activation)
    check_stack_args(weights, biases, scales)
    bias = list(biases) if biases else [None] * (len(weights) + 1)
    outs = [token_patch_embed(tokens, table, bias[0], patch_size=patch_size, scale=scales[0], activation=activation)]
    for l, weight in enumerate(weights):
        outs.append(patch_conv(outs[-1], weight, bias[l + 1], patch_size=patch_size, scale=scales[l + 1],
                               activation=activation))
    return outs
