"""The hierarchical CNN of the 2024 reference library's recipe, on token ids [B, s^L]."""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from rhmfast._checks import check_choice, check_int, check_positive_int, check_seed, check_tokens
from rhmfast.models._common import seeded_generator
from rhmfast.models._reference import NORMS, check_shape, hidden_state_dict, read_hidden_layers
from rhmfast.ops.patch_conv import patch_conv
from rhmfast.ops.patch_conv_stack import patch_conv_stack
from rhmfast.ops.token_patch_embed import token_patch_embed
from rhmfast.reference.patch_conv import ACTIVATIONS


class HierarchicalCNN(nn.Module):
    """The 2024 library's hCNN on token ids: L patchwise layers (kernel = stride = s, width H, activation,
    weights N(0,1), each convolution divided by sqrt(C_in*s)), mean over the remaining positions, readout
    beta [H, n_classes] ~ N(0,1) divided by sqrt(H) (norm="std") or H (norm="mf").

    Parameters, stored in the layout the fused ops read (the whole trunk is one ``patch_conv_stack`` call):
    ``embed`` [s, v, H] (embed[k, t] = conv_1.weight[:, t, k]), ``weights[l]`` [H, s*H] in (k, c) order
    (= conv_{l+2}.weight.permute(0, 2, 1) flattened), ``biases[l]`` [H] in the reference's
    parametrisation (added before the 1/sqrt(C_in*s) division, as in a biased Conv1d that is then
    scaled), ``beta`` [H, n_classes]. ``seed`` makes the initialisation reproducible.

    ``whiten=True`` computes what the reference computes on its whitened input (``--whitening 1``:
    (onehot - 1/v) / sqrt(1 - 1/v)) by using a*(embed[k, t] - mean_t' embed[k, t']), a = (1 - 1/v)^-1/2,
    in place of embed[k, t] (the parameter stays the reference's filter; gradients flow through the map).

    ``from_reference`` / ``to_reference_state_dict`` convert from and to the reference's own key names.
    """

    def __init__(self, v: int, width: int, s: int, L: int, n_classes: int, norm: str = "std", bias: bool = False,
                 activation: str = "relu", seed: int | None = None, whiten: bool = False):
        super().__init__()
        for name, value in (("v", v), ("width", width), ("s", s), ("L", L), ("n_classes", n_classes)):
            check_positive_int(name, value)
        self.v, self.width, self.s, self.L, self.n_classes = v, width, s, L, n_classes
        self.norm = check_choice("norm", norm, NORMS)
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.seed = check_seed("seed", seed)
        if not isinstance(whiten, bool):
            raise TypeError(f"rhmfast: whiten must be a bool, got {type(whiten).__name__}")
        if whiten and v < 2:
            raise ValueError(f"rhmfast: whiten=True needs v >= 2 (it divides by sqrt(1 - 1/v)), got v={v}")
        self.whiten = whiten
        gen = seeded_generator(seed)
        self.embed = nn.Parameter(torch.randn(s, v, width, generator=gen))
        self.weights = nn.ParameterList([nn.Parameter(torch.randn(width, s * width, generator=gen))
                                         for _ in range(L - 1)])
        self.biases = (nn.ParameterList([nn.Parameter(torch.randn(width, generator=gen)) for _ in range(L)])
                       if bias else None)
        self.beta = nn.Parameter(torch.randn(width, n_classes, generator=gen))
        self.scales = [1.0 / math.sqrt(v * s)] + [1.0 / math.sqrt(width * s)] * (L - 1)

    @property
    def readout_norm(self) -> float:
        return math.sqrt(self.width) if self.norm == "std" else float(self.width)

    @property
    def lr_scale(self) -> float:
        """Mean-field training multiplies the learning rate by H (the 2024 reference library's recipe)."""
        return float(self.width) if self.norm == "mf" else 1.0

    def input_embed(self) -> torch.Tensor:
        """The first layer's weights [s, v, H] as the token layer uses them (whitened input folded in)."""
        if not self.whiten:
            return self.embed
        return (self.embed - self.embed.mean(1, keepdim=True)) * (1.0 - 1.0 / self.v) ** -0.5

    def _scaled_biases(self, depth: int):
        # The op computes act(scale*z + b); the reference computes act(scale*(z + b)).
        return None if self.biases is None else [b * c for b, c in zip(list(self.biases)[:depth], self.scales)]

    def _check_input(self, tokens: torch.Tensor) -> None:
        """Token ids [B, s^L] of an integer dtype, else a TypeError/ValueError naming the expected and the
        received shape or dtype. The ids' range [0, v) is checked by the first layer's op (token_patch_embed:
        in eager mode, and in the compiled kernels under torch.compile), so it is not scanned twice here."""
        check_tokens("HierarchicalCNN", tokens, self.v, self.s**self.L, f"s^L={self.s**self.L}", values=False)

    def layer_outputs(self, tokens: torch.Tensor, depth: int | None = None) -> list[torch.Tensor]:
        """Outputs of layers 1..depth (default L), channels-last [B, s^L/s^l, H], in one fused call."""
        depth = self.L if depth is None else check_int("depth", depth, 1, self.L)
        self._check_input(tokens)
        return patch_conv_stack(tokens, self.input_embed(), list(self.weights)[:depth - 1], self._scaled_biases(depth),
                                patch_size=self.s, scales=self.scales[:depth], activation=self.activation,
                                return_all=True)

    def layer(self, l: int, inputs: torch.Tensor) -> torch.Tensor:
        """Layer l (1-based) alone: from token ids when l = 1, else from layer l-1's output."""
        check_int("l", l, 1, self.L)
        bias = None if self.biases is None else self.biases[l - 1] * self.scales[l - 1]
        if l == 1:
            self._check_input(inputs)
            return token_patch_embed(inputs, self.input_embed(), bias, patch_size=self.s, scale=self.scales[0],
                                     activation=self.activation)
        return patch_conv(inputs, self.weights[l - 2], bias, patch_size=self.s, scale=self.scales[l - 1],
                          activation=self.activation)

    def layer_parameters(self, l: int) -> list[nn.Parameter]:
        check_int("l", l, 1, self.L)
        params = [self.embed if l == 1 else self.weights[l - 2]]
        return params + ([self.biases[l - 1]] if self.biases is not None else [])

    def readout(self, h: torch.Tensor, beta: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over positions of a channels-last [B, T, H] output, then the scaled readout."""
        return h.mean(1) @ (self.beta if beta is None else beta) / self.readout_norm

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.readout(self.layer_outputs(tokens)[-1])


    # ---- the reference's parameter layout -------------------------------------------------------------
    # models/cnn.py: hidden.{l} = Sequential(MyConv1d, ReLU); MyConv1d.filter [C_out, C_in, s] (C_in = v for
    # l = 0), MyConv1d.bias [C_out] (--bias), added before the 1/sqrt(C_in*s) division; readout [H, n_c].

    def to_reference_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under the reference hCNN's keys, in its state dict's order: ``readout`` [H, n_classes],
        ``hidden.{l}.0.filter`` [H, C_in, s], ``hidden.{l}.0.bias`` [H] (bias=True). Exact copies."""
        filters = [self.embed.detach().permute(2, 1, 0)]
        filters += [w.detach().reshape(self.width, self.s, self.width).permute(0, 2, 1) for w in self.weights]
        biases = None if self.biases is None else [b.detach().clone() for b in self.biases]
        return hidden_state_dict(self.beta.detach().clone(), [f.contiguous() for f in filters], biases)

    @classmethod
    def from_reference(cls, model_or_state_dict, *, s: int | None = None, norm: str | None = None,
                       activation: str = "relu", whiten: bool = False) -> "HierarchicalCNN":
        """The HierarchicalCNN computing what a reference ``hCNN`` (models/cnn.py) computes, from the module or
        its state dict (keys as in to_reference_state_dict), on the tensors' device and dtype. v, width, L,
        n_classes, bias and s (the filters' last dim; s, if given, is checked) come from the shapes. norm: a
        module's is read off its readout divisor (H: "mf", sqrt(H): "std"; a given norm is checked); a state dict
        has none, so it defaults to "mf", what the reference's init.py builds. whiten: the data's --whitening."""
        owner = "HierarchicalCNN.from_reference"
        net = read_hidden_layers(model_or_state_dict, owner, "hCNN", "[H, v, s]", s)
        state, L, width, s = net.state, net.L, net.width, net.s
        check_shape(state, "hidden.0.0.filter", (width, net.v, s), owner)
        for l in range(1, L):
            check_shape(state, f"hidden.{l}.0.filter", (width, width, s), owner)
        for l in range(L if net.bias else 0):
            check_shape(state, f"hidden.{l}.0.bias", (width,), owner)
        check_shape(state, "readout", (width, net.n_classes), owner)
        model = net.build(cls, norm, owner, activation=activation, whiten=whiten)
        with torch.no_grad():
            model.embed.copy_(state["hidden.0.0.filter"].permute(2, 1, 0))
            for l in range(1, L):
                w = state[f"hidden.{l}.0.filter"]
                model.weights[l - 1].copy_(w.permute(0, 2, 1).reshape(width, s * width))
            for l in range(L if net.bias else 0):
                model.biases[l].copy_(state[f"hidden.{l}.0.bias"])
            model.beta.copy_(state["readout"])
        return model

    @classmethod
    def from_reference_state_dict(cls, state: dict[str, torch.Tensor], s: int, norm: str = "std",
                                  activation: str = "relu") -> "HierarchicalCNN":
        """Older name of from_reference for state dicts; also reads the keys rhmfast wrote before it used the
        reference's ("hier.{l}.weight", "hier.{l}.bias", "beta")."""
        renamed = {}
        for key, value in state.items():
            m = re.fullmatch(r"hier\.(\d+)\.(weight|bias)", key)
            key = (f"hidden.{m.group(1)}.0.{'filter' if m.group(2) == 'weight' else 'bias'}" if m
                   else "readout" if key == "beta" else key)
            renamed[key] = value
        return cls.from_reference(renamed, s=s, norm=norm, activation=activation)

    @classmethod
    def replicas(cls, n_replicas: int, seeds, **arguments) -> "HierarchicalCNNReplicas":
        """K independent hCNNs as one module (``HierarchicalCNNReplicas``): replica k has, bit for bit, the
        initial weights of ``HierarchicalCNN(**arguments, seed=seeds[k])``. E.g.
        ``HierarchicalCNN.replicas(4, [0, 1, 2, 3], v=8, width=64, s=2, L=4, n_classes=8, norm="mf")``."""
        return HierarchicalCNNReplicas(n_replicas, seeds, **arguments)



class HierarchicalCNNReplicas(nn.Module):
    """K independent hCNNs of one architecture (``HierarchicalCNN``'s arguments) trained as one batched model.

    Every parameter is replica k's ``HierarchicalCNN`` parameter stacked along a leading dim K: ``embed``
    [K, s, v, H], ``weights[l]`` [K, H, s*H], ``biases[l]`` [K, H], ``beta`` [K, H, n_classes]. The trunk is one
    replica-form ``patch_conv_stack`` call: tokens [K, B, s^L] (replica k's batch in row k) give logits
    [K, B, n_classes], row k being what replica k's own HierarchicalCNN computes on it. Nothing couples the
    replicas: the gradient of a sum of per-replica losses is, replica by replica, that replica's own gradient.
    ``replica(k)`` returns replica k as an ordinary HierarchicalCNN; ``subset``/``load_subset`` take replicas
    out and put them back (the replica trainer drops replicas that stopped).
    """

    def __init__(self, n_replicas: int, seeds, *, v: int, width: int, s: int, L: int, n_classes: int,
                 norm: str = "std", bias: bool = False, activation: str = "relu", whiten: bool = False):
        super().__init__()
        check_positive_int("n_replicas", n_replicas)
        seeds = None if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__") else list(seeds)
        if seeds is None or len(seeds) != n_replicas:
            raise ValueError(f"rhmfast: seeds must be a list of n_replicas={n_replicas} seeds (one per replica: "
                             f"ints >= 0, or None), got {seeds!r}")
        models = [HierarchicalCNN(v, width, s, L, n_classes, norm=norm, bias=bias, activation=activation, seed=seed,
                                  whiten=whiten) for seed in seeds]
        self.arguments = dict(v=v, width=width, s=s, L=L, n_classes=n_classes, norm=norm, bias=bias,
                              activation=activation, whiten=whiten)
        self.v, self.width, self.s, self.L, self.n_classes = v, width, s, L, n_classes
        self.norm, self.activation, self.whiten, self.scales = norm, activation, whiten, models[0].scales
        self.n_replicas, self.seeds = n_replicas, [m.seed for m in models]
        self._set_parameters([{n: p.detach() for n, p in m.named_parameters()} for m in models])

    def _set_parameters(self, per_replica) -> None:
        """The parameters from per_replica[k] = dict(replica k's HierarchicalCNN.named_parameters())."""
        stacked = {name: torch.stack([p[name] for p in per_replica]) for name in per_replica[0]}
        self.embed = nn.Parameter(stacked["embed"])
        self.weights = nn.ParameterList([nn.Parameter(stacked[f"weights.{l}"]) for l in range(self.L - 1)])
        self.biases = (nn.ParameterList([nn.Parameter(stacked[f"biases.{l}"]) for l in range(self.L)])
                       if self.arguments["bias"] else None)
        self.beta = nn.Parameter(stacked["beta"])

    readout_norm = HierarchicalCNN.readout_norm
    lr_scale = HierarchicalCNN.lr_scale

    def input_embed(self) -> torch.Tensor:
        """The token layer's tables [K, s, v, H] (whitened input folded in, as HierarchicalCNN.input_embed)."""
        if not self.whiten:
            return self.embed
        return (self.embed - self.embed.mean(2, keepdim=True)) * (1.0 - 1.0 / self.v) ** -0.5

    def _check_input(self, tokens: torch.Tensor, count: int) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3 or tokens.shape[0] != count:
            got = list(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"rhmfast: HierarchicalCNNReplicas expects token ids [K={count}, B, "
                             f"s^L={self.s**self.L}] (one batch per replica), got {got}")
        check_tokens("HierarchicalCNNReplicas", tokens[0], self.v, self.s**self.L, f"s^L={self.s**self.L}",
                     values=False)

    def _parameters_of(self, rows):
        """(table, weights, biases, beta) of all replicas, or of the replicas `rows` (a list of indices:
        gathered, differentiably, so their gradients land in those rows)."""
        table, weights, biases, beta = self.input_embed(), list(self.weights), self.biases, self.beta
        biases = None if biases is None else [b * c for b, c in zip(biases, self.scales)]
        if rows is not None:
            index = torch.tensor(rows, device=beta.device)
            pick = lambda t: t.index_select(0, index)  # noqa: E731
            table, weights, beta = pick(table), [pick(w) for w in weights], pick(beta)
            biases = None if biases is None else [pick(b) for b in biases]
        return table, weights, biases, beta

    def layer_outputs(self, tokens: torch.Tensor, rows=None) -> list[torch.Tensor]:
        """Every layer's output [K, B, s^L/s^l, H], in one fused replica-form call; rows: of those replicas
        only (tokens [len(rows), B, s^L])."""
        self._check_input(tokens, self.n_replicas if rows is None else len(rows))
        table, weights, biases, _ = self._parameters_of(rows)
        return patch_conv_stack(tokens, table, weights, biases, patch_size=self.s, scales=self.scales,
                                activation=self.activation, return_all=True)

    def forward(self, tokens: torch.Tensor, rows=None) -> torch.Tensor:
        """Logits [K, B, n_classes] of token ids [K, B, s^L]; rows (a list of replica indices): those replicas
        only, on tokens [len(rows), B, s^L]."""
        self._check_input(tokens, self.n_replicas if rows is None else len(rows))
        table, weights, biases, beta = self._parameters_of(rows)
        h = patch_conv_stack(tokens, table, weights, biases, patch_size=self.s, scales=self.scales,
                             activation=self.activation).mean(2)
        # One small GEMM per replica, as the solo readout computes it: a batched GEMM's kernels for small
        # products differ from a single one's in the last bits (MKL, measured), and the replicas must be exact.
        # unbind, not h[k]: its backward is one stack, where K selects would each add into a zeroed [K, ...].
        return torch.stack([a @ b for a, b in zip(h.unbind(0), beta.unbind(0))]) / self.readout_norm

    def forward_replica(self, k: int, tokens: torch.Tensor) -> torch.Tensor:
        """Replica k alone on token ids [B, s^L]: logits [B, n_classes] (the replica-form op with K = 1 on views
        of its weights; nothing is copied). The replica trainer evaluates each run's test set with it."""
        check_int("k", k, 0, self.n_replicas - 1)
        check_tokens("HierarchicalCNNReplicas.forward_replica", tokens, self.v, self.s**self.L,
                     f"s^L={self.s**self.L}", values=False)
        row = slice(k, k + 1)
        biases = None if self.biases is None else [b[row] * c for b, c in zip(self.biases, self.scales)]
        h = patch_conv_stack(tokens.unsqueeze(0), self.input_embed()[row], [w[row] for w in self.weights], biases,
                             patch_size=self.s, scales=self.scales, activation=self.activation)
        return h.squeeze(0).mean(1) @ self.beta[k] / self.readout_norm

    def replica(self, k: int) -> HierarchicalCNN:
        """Replica k as an ordinary HierarchicalCNN (copies of its weights, on this module's device and dtype)."""
        check_int("k", k, 0, self.n_replicas - 1)
        model = HierarchicalCNN(**self.arguments, seed=0)  # a private generator: the global one does not move
        model.seed = self.seeds[k]
        model.to(device=self.embed.device, dtype=self.embed.dtype)
        mine = dict(self.named_parameters())
        with torch.no_grad():
            for name, theirs in model.named_parameters():
                theirs.copy_(mine[name][k])
        return model

    def subset(self, indices) -> "HierarchicalCNNReplicas":
        """The replicas at `indices` (ints in [0, K)) as a new module holding copies of their weights."""
        indices = [check_int("index", k, 0, self.n_replicas - 1) for k in indices]
        if not indices:
            raise ValueError("rhmfast: subset needs at least one replica index")
        new = HierarchicalCNNReplicas.__new__(HierarchicalCNNReplicas)
        nn.Module.__init__(new)
        new.arguments, new.scales = self.arguments, self.scales
        new.v, new.width, new.s, new.L, new.n_classes = self.v, self.width, self.s, self.L, self.n_classes
        new.norm, new.activation, new.whiten = self.norm, self.activation, self.whiten
        new.n_replicas, new.seeds = len(indices), [self.seeds[k] for k in indices]
        new._set_parameters([{n: p.detach()[k].clone() for n, p in self.named_parameters()} for k in indices])
        new.train(self.training)
        return new

    def load_subset(self, indices, other: "HierarchicalCNNReplicas") -> None:
        """Copy other's replicas (a subset() of this module, trained since) back into the rows `indices`."""
        with torch.no_grad():
            theirs_by_name = dict(other.named_parameters())
            for name, mine in self.named_parameters():
                theirs = theirs_by_name[name]
                for row, k in enumerate(indices):
                    mine[k].copy_(theirs[row])

    def extra_repr(self) -> str:
        return (f"n_replicas={self.n_replicas}, v={self.v}, width={self.width}, s={self.s}, L={self.L}, "
                f"n_classes={self.n_classes}, norm={self.norm!r}, activation={self.activation!r}")
