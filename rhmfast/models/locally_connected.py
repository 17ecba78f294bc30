"""The hierarchical locally connected network (hLCN) of the 2024 reference library, on token ids [B, s^L]."""
from __future__ import annotations

import math

import torch
from torch import nn

from rhmfast._checks import check_choice, check_int, check_positive_int, check_seed, check_tokens
from rhmfast.models._common import seeded_generator
from rhmfast.models._reference import NORMS, check_shape, hidden_state_dict, read_hidden_layers
from rhmfast.models.hcnn import HierarchicalCNN
from rhmfast.ops.locally_connected import locally_connected
from rhmfast.ops.token_patch_embed import token_patch_embed
from rhmfast.reference.patch_conv import ACTIVATIONS


class LocallyConnected(nn.Module):
    """The 2024 library's hLCN (models/lcn.py) on token ids: the hCNN's architecture with untied weights, a
    separate filter for every patch. L layers of non-overlapping patches of s positions (width H,
    activation), weights N(0,1), each patch's product divided by sqrt(C_in*s), an optional per-patch bias
    added after that division, mean over the remaining positions (one, as the input has s^L tokens),
    readout beta [H, n_classes] ~ N(0,1) divided by sqrt(H) (norm="std") or H (norm="mf"; the library's
    init.py builds "mf" and multiplies the learning rate by H: ``lr_scale``).

    Layer l (1-based) has P_l = s^(L-l) patches. Parameters, stored in the layout the fused ops read:
    ``embed`` [s, P_1*v, H], embed[k, p*v + t] = hidden.0.0.filter[:, t, p, k] (the first layer is a
    gather of s rows per patch from the token ids, ``token_patch_embed`` on ids offset by p*v, never a
    one-hot product); ``weights[l]`` [P_{l+2}, H, s*H] in (k, c) order (weights[l][p, :, k*H + c] =
    hidden.{l+1}.0.filter[:, c, p, k]), each layer one ``locally_connected`` call; ``biases[l]`` [P_{l+1}, H]
    (= hidden.{l}.0.bias[0].T); ``beta`` [H, n_classes]. ``seed`` draws the library's tensors in its order
    (per layer filter then bias, readout last): the same initial network as the library's hLCN built right
    after ``torch.manual_seed(seed)``.

    ``from_reference`` / ``to_reference_state_dict`` convert from and to the library's own key names.
    """

    def __init__(self, v: int, width: int, s: int, L: int, n_classes: int, norm: str = "std", bias: bool = False,
                 activation: str = "relu", seed: int | None = None):
        super().__init__()
        for name, value in (("v", v), ("width", width), ("s", s), ("L", L), ("n_classes", n_classes)):
            check_positive_int(name, value)
        self.v, self.width, self.s, self.L, self.n_classes = v, width, s, L, n_classes
        self.d = s**L
        self.norm = check_choice("norm", norm, NORMS)
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.seed = check_seed("seed", seed)
        self.patches = [s ** (L - l) for l in range(1, L + 1)]  # P_l of layers l = 1..L
        gen = seeded_generator(seed)
        filters, biases = [], []
        for l, n_patches in enumerate(self.patches):
            filters.append(torch.randn(width, v if l == 0 else width, n_patches, s, generator=gen))
            if bias:
                biases.append(torch.randn(1, width, n_patches, generator=gen))
        beta = torch.randn(width, n_classes, generator=gen)
        self.embed = nn.Parameter(self._embed_of(filters[0]))
        self.weights = nn.ParameterList([nn.Parameter(self._weight_of(f)) for f in filters[1:]])
        self.biases = nn.ParameterList([nn.Parameter(b[0].t().contiguous()) for b in biases]) if bias else None
        self.beta = nn.Parameter(beta)
        self.scales = [1.0 / math.sqrt(v * s)] + [1.0 / math.sqrt(width * s)] * (L - 1)
        # Patch p's tokens index rows p*v + t of embed (int64, as the ops read any integer type).
        self.register_buffer("offsets", torch.arange(self.d) // s * v, persistent=False)

    @staticmethod
    def _embed_of(f: torch.Tensor) -> torch.Tensor:
        """embed [s, P*v, H] of the library's first filter [H, v, P, s]."""
        width, v, n_patches, s = f.shape
        return f.permute(3, 2, 1, 0).reshape(s, n_patches * v, width).contiguous()

    @staticmethod
    def _weight_of(f: torch.Tensor) -> torch.Tensor:
        """weight [P, H, s*C_in] in (k, c) order of a library filter [H, C_in, P, s]."""
        width, c_in, n_patches, s = f.shape
        return f.permute(2, 0, 3, 1).reshape(n_patches, width, s * c_in).contiguous()

    # The readout, its divisor and the mean-field learning-rate factor are the hCNN's.
    readout_norm = HierarchicalCNN.readout_norm
    lr_scale = HierarchicalCNN.lr_scale
    readout = HierarchicalCNN.readout

    def _patch_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [B, s^L] as rows of embed, p*v + t. An id outside [0, v) would select another patch's row,
        so it becomes P_1*v, which the first layer's op refuses (also where the eager check does not run)."""
        t = tokens.long()
        return torch.where((t >= 0) & (t < self.v), t + self.offsets, self.patches[0] * self.v)

    def _check_input(self, tokens: torch.Tensor) -> None:
        """Token ids [B, s^L] of an integer dtype with values in [0, v) (in eager mode), else a
        TypeError/ValueError naming the expected and the received shape, dtype or value."""
        check_tokens("LocallyConnected", tokens, self.v, self.d, f"s^L={self.d}")

    def layer_outputs(self, tokens: torch.Tensor, depth: int | None = None) -> list[torch.Tensor]:
        """Outputs of layers 1..depth (default L), channels-last [B, s^(L-l), H]."""
        depth = self.L if depth is None else check_int("depth", depth, 1, self.L)
        self._check_input(tokens)
        biases = [None] * self.L if self.biases is None else list(self.biases)
        h = token_patch_embed(self._patch_ids(tokens), self.embed, None, biases[0], patch_size=self.s,
                              scale=self.scales[0], activation=self.activation)
        outputs = [h]
        for l in range(1, depth):
            h = locally_connected(h, self.weights[l - 1], biases[l], patch_size=self.s, scale=self.scales[l],
                                  activation=self.activation)
            outputs.append(h)
        return outputs

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.readout(self.layer_outputs(tokens)[-1])

    # ---- the reference's parameter layout -------------------------------------------------------------
    # models/lcn.py: hidden.{l} = Sequential(MyLoc1d, ReLU); MyLoc1d.filter [C_out, C_in, P, s] (C_in = v for
    # l = 0), MyLoc1d.bias [1, C_out, P] (--bias), added after the 1/sqrt(C_in*s) division; readout [H, n_c].

    def to_reference_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under the reference hLCN's keys, in its state dict's order: ``readout`` [H, n_classes],
        ``hidden.{l}.0.filter`` [H, C_in, P, s], ``hidden.{l}.0.bias`` [1, H, P] (bias=True). Exact copies."""
        s, v, width = self.s, self.v, self.width
        filters = [self.embed.detach().reshape(s, self.patches[0], v, width).permute(3, 2, 1, 0)]
        filters += [w.detach().reshape(n, width, s, width).permute(1, 3, 0, 2)
                    for w, n in zip(self.weights, self.patches[1:])]
        biases = None if self.biases is None else [b.detach().t().unsqueeze(0).contiguous() for b in self.biases]
        return hidden_state_dict(self.beta.detach().clone(), [f.contiguous() for f in filters], biases)

    @classmethod
    def from_reference(cls, model_or_state_dict, *, s: int | None = None, norm: str | None = None,
                       activation: str = "relu") -> "LocallyConnected":
        """The LocallyConnected computing what a reference ``hLCN`` (models/lcn.py) computes, from the module or
        its state dict (keys as in to_reference_state_dict), on the tensors' device and dtype. v, width, L,
        n_classes, bias and s (the filters' last dim; s, if given, is checked) come from the shapes, which
        must be those of an input of s^L tokens. norm: a module's is read off its readout divisor (H: "mf",
        sqrt(H): "std"; a given norm is checked); a state dict has none, so it defaults to "mf", what the
        reference's init.py builds."""
        owner = "LocallyConnected.from_reference"
        net = read_hidden_layers(model_or_state_dict, owner, "hLCN", "[H, v, P, s]", s)
        state, L, width, s = net.state, net.L, net.width, net.s
        for l in range(L):
            check_shape(state, f"hidden.{l}.0.filter", (width, net.v if l == 0 else width, s ** (L - 1 - l), s), owner)
            if net.bias:
                check_shape(state, f"hidden.{l}.0.bias", (1, width, s ** (L - 1 - l)), owner)
        check_shape(state, "readout", (width, net.n_classes), owner)
        model = net.build(cls, norm, owner, activation=activation)
        with torch.no_grad():
            model.embed.copy_(cls._embed_of(state["hidden.0.0.filter"]))
            for l in range(1, L):
                model.weights[l - 1].copy_(cls._weight_of(state[f"hidden.{l}.0.filter"]))
            for l in range(L if net.bias else 0):
                model.biases[l].copy_(state[f"hidden.{l}.0.bias"][0].t())
            model.beta.copy_(state["readout"])
        return model

    def extra_repr(self) -> str:
        return (f"v={self.v}, width={self.width}, s={self.s}, L={self.L}, n_classes={self.n_classes}, "
                f"norm={self.norm!r}, activation={self.activation!r}, bias={self.biases is not None}")
