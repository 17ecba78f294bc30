"""Drop-in modules for patchwise (kernel = stride) convolutions.

``PatchConv1d`` has the parameters, shapes and state_dict keys of ``nn.Conv1d(in, out, kernel_size=s,
stride=s)``, so checkpoints load either way; it runs ``rhmfast.ops.patch_conv.patch_conv``. Its weight
[C_out, C_in, s] is stored with strides that make it a permuted view of a contiguous [C_out, s, C_in]
tensor: the GEMM operand [C_out, s*C_in] in (k, c) order is then a zero-copy view, so the layout is
converted once, when the weight is created or loaded, never per call.
``TokenPatchEmbedding`` is the first layer straight from token ids; ``convert`` swaps eligible
``nn.Conv1d`` layers of any model for ``PatchConv1d``.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from rhmfast._checks import check_positive_int, check_real
from rhmfast.ops.patch_conv import patch_conv
from rhmfast.ops.token_patch_embed import token_patch_embed
from rhmfast.reference.patch_conv import check_activation

LAYOUTS = ("ncl", "nlc")


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"rhmfast: layout must be 'ncl' (channels-first, like nn.Conv1d) or 'nlc' "
                         f"(channels-last), got {layout!r}")
    return layout


def _activation(activation: str | None) -> str:
    return check_activation("none" if activation is None else activation)


def is_patch_conv(conv: nn.Module) -> bool:
    """True for an nn.Conv1d that is a patchwise layer: kernel == stride, no padding, dilation 1, groups 1."""
    return (isinstance(conv, nn.Conv1d) and not isinstance(conv, nn.LazyConv1d)
            and conv.kernel_size[0] == conv.stride[0] and conv.padding in ((0,), "valid")
            and conv.dilation == (1,) and conv.groups == 1)


class PatchConv1d(nn.Module):
    """Conv1d with kernel_size = stride = patch_size, bias and activation fused.

    layout "ncl": input [B, C_in, T] -> output [B, C_out, T/s], like nn.Conv1d (the output is a
    channels-last tensor seen through a transpose, so chaining PatchConv1d layers copies nothing;
    call .contiguous() where code needs .view). layout "nlc": channels-last [B, T, C_in] ->
    [B, T/s, C_out] with no copies. Unbatched input (no B) works as in nn.Conv1d. As in nn.Conv1d, a
    length that is not a multiple of s drops the last T % s positions. scale multiplies the
    convolution before the bias (the hCNN's 1/sqrt(fan_in)).
    """

    def __init__(self, in_channels: int, out_channels: int, patch_size: int, bias: bool = True,
                 activation: str | None = None, layout: str = "ncl", scale: float = 1.0, device=None, dtype=None):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("patch_size", patch_size)):
            check_positive_int(name, value)  # bools too are refused (True would be a patch size of 1)
        self.in_channels, self.out_channels, self.patch_size = in_channels, out_channels, patch_size
        self.activation = _activation(activation)
        self.layout = _check_layout(layout)
        self.scale = check_real("scale", scale)
        factory = dict(device=device, dtype=dtype)
        storage = torch.empty(out_channels, patch_size, in_channels, **factory)
        self.weight = nn.Parameter(storage.permute(0, 2, 1))  # shape [C_out, C_in, s], like nn.Conv1d
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv1d's initialisation (uniform with bound 1/sqrt(fan_in) for weight and bias)."""
        bound = 1.0 / math.sqrt(self.in_channels * self.patch_size)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def gemm_weight(self) -> torch.Tensor:
        """The weight as the GEMM operand [C_out, s*C_in] in (k, c) order (a view of the parameter)."""
        return self.weight.permute(0, 2, 1).reshape(self.out_channels, self.patch_size * self.in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 3:
            raise ValueError(f"rhmfast: PatchConv1d expects a 2-D or 3-D input, got shape {list(x.shape)}")
        channels_last = x if self.layout == "nlc" else x.transpose(1, 2)
        if channels_last.shape[2] != self.in_channels:
            raise ValueError(f"rhmfast: PatchConv1d expects {self.in_channels} input channels, got "
                             f"{channels_last.shape[2]} (input shape {list(x.shape)}, layout {self.layout!r})")
        if channels_last.shape[1] < self.patch_size:  # nn.Conv1d refuses it too
            raise ValueError(f"rhmfast: PatchConv1d needs an input length >= patch_size = {self.patch_size}, got "
                             f"{channels_last.shape[1]} (input shape {list(x.shape)}, layout {self.layout!r})")
        usable = channels_last.shape[1] - channels_last.shape[1] % self.patch_size
        if usable != channels_last.shape[1]:
            channels_last = channels_last[:, :usable]
        y = patch_conv(channels_last, self.gemm_weight(), self.bias, patch_size=self.patch_size, scale=self.scale,
                       activation=self.activation)
        if self.layout == "ncl":
            y = y.transpose(1, 2)
        return y.squeeze(0) if unbatched else y

    @classmethod
    def from_conv1d(cls, conv: nn.Conv1d, activation: str | None = None, layout: str = "ncl") -> "PatchConv1d":
        """A PatchConv1d computing what conv computes (followed by activation), with its weights copied."""
        if not is_patch_conv(conv):
            raise ValueError(f"rhmfast: only an nn.Conv1d with kernel_size == stride, no padding, dilation 1 and "
                             f"groups 1 is a patchwise layer, got {conv}")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], bias=conv.bias is not None,
                    activation=activation, layout=layout, device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        layer.train(conv.training)
        return layer

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, patch_size={self.patch_size}, bias={self.bias is not None}, "
                f"activation={self.activation!r}, layout={self.layout!r}, scale={self.scale}")


def convert(model: nn.Module) -> nn.Module:
    """Replaces, in place, every patchwise nn.Conv1d of model (see is_patch_conv) by an equivalent
    PatchConv1d; other modules are left untouched. Returns model (a bare patchwise Conv1d is returned
    converted, since it cannot be replaced in place). When it replaces nothing it warns, saying why (the
    2024 reference library's hCNN and fcn have their own layers: use ``HierarchicalCNN.from_reference``,
    ``FullyConnected.from_reference``)."""
    if is_patch_conv(model):
        return PatchConv1d.from_conv1d(model)
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_patch_conv(child):
                setattr(parent, name, PatchConv1d.from_conv1d(child))
                swapped += 1
    if not swapped:
        warnings.warn(_nothing_converted(model), UserWarning, stacklevel=2)
    return model


def _nothing_converted(model: nn.Module) -> str:
    """Why convert swapped nothing, and what to use instead where we can tell."""
    modules = list(model.modules())
    names = {type(m).__name__ for m in modules}
    convs = [m for m in modules if isinstance(m, nn.Conv1d)]
    done = sum(isinstance(m, PatchConv1d) for m in modules)
    text = (f"rhmfast.nn.convert: nothing converted, {type(model).__name__} is returned unchanged: it has no "
            f"nn.Conv1d with kernel_size == stride (no padding, dilation 1, groups 1)")
    if convs:
        text += (f"; its {len(convs)} nn.Conv1d layer(s) are not patchwise (e.g. kernel_size={convs[0].kernel_size[0]},"
                 f" stride={convs[0].stride[0]}, padding={convs[0].padding}, dilation={convs[0].dilation[0]}, "
                 f"groups={convs[0].groups})")
    if done:
        text += f"; it already has {done} PatchConv1d layer(s) (converted before?)"
    if "MyConv1d" in names or any(isinstance(getattr(m, "filter", None), torch.Tensor) for m in modules):
        text += ("; it looks like the 2024 reference library's hCNN, whose layers are its own MyConv1d (a 'filter' "
                 "parameter): use rhmfast.models.HierarchicalCNN.from_reference(model), which runs on token ids")
    elif names & {"MyLinear", "MLP", "Perceptron"}:
        text += ("; it looks like the 2024 reference library's fcn: use "
                 "rhmfast.models.FullyConnected.from_reference(model, v=...)")
    return text


class TokenPatchEmbedding(nn.Module):
    """The first patchwise layer from token ids [B, T] (no one-hot input): equal to a PatchConv1d with
    in_channels = vocab_size on the one-hot encoding, at the cost of s row look-ups per output.

    weight [patch_size, vocab_size, C_out] (weight[k, t] = conv.weight[:, t, k]). layout "ncl" returns
    [B, C_out, T/s] like a Conv1d on one-hot input; "nlc" returns [B, T/s, C_out].
    """

    def __init__(self, vocab_size: int, out_channels: int, patch_size: int, bias: bool = True,
                 activation: str | None = None, layout: str = "ncl", scale: float = 1.0, device=None, dtype=None):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("out_channels", out_channels), ("patch_size", patch_size)):
            check_positive_int(name, value)
        self.vocab_size, self.out_channels, self.patch_size = vocab_size, out_channels, patch_size
        self.activation = _activation(activation)
        self.layout = _check_layout(layout)
        self.scale = check_real("scale", scale)
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(patch_size, vocab_size, out_channels, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.vocab_size * self.patch_size)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        y = token_patch_embed(tokens, self.weight, self.bias, patch_size=self.patch_size, scale=self.scale,
                              activation=self.activation)
        return y.transpose(1, 2) if self.layout == "ncl" else y

    @classmethod
    def from_patch_conv(cls, layer: nn.Module, activation: str | None = None,
                        layout: str | None = None) -> "TokenPatchEmbedding":
        """The token layer computing what layer (a PatchConv1d, or a patchwise nn.Conv1d) computes on the
        one-hot encoding of the tokens; activation, layout and scale default to the layer's own."""
        if isinstance(layer, PatchConv1d):
            activation = layer.activation if activation is None else activation
            layout = layer.layout if layout is None else layout
            scale = layer.scale
        elif is_patch_conv(layer):
            scale = 1.0
        else:
            raise ValueError(f"rhmfast: from_patch_conv needs a PatchConv1d or a patchwise nn.Conv1d, got {layer}")
        vocab, out_channels, patch_size = layer.weight.shape[1], layer.weight.shape[0], layer.weight.shape[2]
        emb = cls(vocab, out_channels, patch_size, bias=layer.bias is not None, activation=activation,
                  layout=layout or "ncl", scale=scale, device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            emb.weight.copy_(layer.weight.permute(2, 1, 0))
            if layer.bias is not None:
                emb.bias.copy_(layer.bias)
        return emb
