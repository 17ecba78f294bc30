"""One training run described by one flat, JSON-serialisable config: what a sweep stores, hashes and
dispatches, and what ``rhmfast train`` runs.

A config names the grammar (v, m, s, L, n_classes, rules, seed_rules, and require: a condition seed_rules
was searched to meet), the learner (model, trainer and their hyper-parameters), the training-set size P
and the seeds of data (seed_sample) and model (seed_model). ``complete_config`` fills the defaults and
resolves the automatic choices, so the stored config says everything the run depended on; its hash names
the run in the result store. Where a run is executed (device, threads) is not part of the config: it must
not change which experiment a record is.
"""
from __future__ import annotations

import hashlib
import json
import math
from fractions import Fraction

from rhmfast._checks import check_choice, check_positive_int
from rhmfast.models.ren import FEATURES as REN_FEATURES

RUN_FORMAT_VERSION = 1  # part of every hash: a change of what a config means gets new run names

MODELS = ("hcnn", "fc", "ren")
TRAINERS = {"hcnn": ("sgd", "layerwise", "layerwise_hints"), "fc": ("sgd",), "ren": ("ren",)}
SAMPLERS = ("pcsl", "pcsl-2023", "first-token-uniform")
REQUIREMENTS = (None, "assumption6")

DEFAULTS = dict(
    # grammar; require "assumption6": seed_rules must give a grammar that satisfies Ren et al.'s Assumption 6
    # (a sweep searches the first such seed >= the one given)
    v=8, m=2, s=2, L=3, n_classes=None, rules="pcsl", seed_rules=0, require=None,
    # data and seeds: samples are drawn from the stream seed_sample, the model initialised from seed_model
    P=None, n_test=2048, seed_sample=0, seed_model=0,
    # learner: trainer "auto" is sgd for hcnn and fc, ren for the Ren learner
    model="hcnn", trainer="auto", width=64, depth=1, norm="mf", bias=False, activation="relu", hint_weight=1.0,
    # SGD (the reference recipe); max_epochs None: ceil(max_steps / steps per epoch) epochs
    lr=0.1, momentum=0.9, weight_decay=0.0, batch_size=128, max_steps=3000, max_epochs=None,
    loss_threshold=1e-3, cosine=False, online=False,
    # Ren et al.: P is the total of the stages' fresh samples, N^(l) proportional to m^l
    # ren_lam None: the ridge penalty 1/(v m) of Ren et al. ren_sigma: the RBF bandwidth above the input level
    # times sqrt(m), or "auto" (per level, from the measured clusters of its embeddings); ren_features: the
    # number M of random Fourier features (rff kinds only)
    ren_features=512, ren_sigma=0.28, ren_feature_kind="tensor+rff", ren_lam=None,
)

_SGD = ("lr", "momentum", "weight_decay", "batch_size", "max_steps", "max_epochs", "loss_threshold", "cosine", "online")
_REN = ("ren_features", "ren_sigma", "ren_feature_kind", "ren_lam")
# The parameters each learner reads; complete_config sets the others to None, so that a parameter a run
# ignores never makes two names for one run.
USED_BY = {"hcnn": ("width", "norm", "bias", "activation", "hint_weight") + _SGD, "fc": ("width", "depth") + _SGD,
           "ren": _REN}
_LEARNER_KEYS = {key for keys in USED_BY.values() for key in keys}

POSITIVE_INT_KEYS = ("v", "m", "s", "L", "P", "n_test", "width", "depth", "batch_size", "max_steps", "ren_features")
SEED_KEYS = ("seed_rules", "seed_sample", "seed_model")
# Keys added after runs were stored: at None they stay out of the hash, so the stored runs keep their names.
_UNHASHED_AT_NONE = ("require",)


def complete_config(config: dict) -> dict:
    """The config with defaults filled in, automatic choices resolved and the parameters its learner
    does not read set to None (idempotent); ValueError names a bad key and its allowed values."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"rhmfast: unknown run parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
    c = {**DEFAULTS, **config}
    if c["P"] is None:
        raise ValueError("rhmfast: P (the training-set size) must be given")
    check_choice("model", c["model"], MODELS)
    check_choice("rules", c["rules"], SAMPLERS)
    check_choice("require", c["require"], REQUIREMENTS)
    if c["trainer"] == "auto":
        c["trainer"] = TRAINERS[c["model"]][0]
    check_choice(f"trainer (for model {c['model']!r})", c["trainer"], TRAINERS[c["model"]])
    used = set(USED_BY[c["model"]]) - ({"hint_weight"} if c["trainer"] != "layerwise_hints" else set())
    if c["model"] == "ren":
        kind = check_choice("ren_feature_kind", c["ren_feature_kind"], REN_FEATURES)
        used -= set() if kind in ("rff", "tensor+rff") else {"ren_features"}
        used -= set() if kind in ("rff", "tensor+rff", "kernel", "tensor+kernel") else {"ren_sigma"}
    c = {key: (value if key not in _LEARNER_KEYS or key in used else None) for key, value in c.items()}
    for key in POSITIVE_INT_KEYS:
        if c[key] is not None or key not in _LEARNER_KEYS:
            check_positive_int(key, c[key])
    for key in SEED_KEYS:
        if isinstance(c[key], bool) or not isinstance(c[key], int) or c[key] < 0:
            raise ValueError(f"rhmfast: {key} must be an int >= 0, got {c[key]!r}")
    c["n_classes"] = c["v"] if c["n_classes"] is None else check_positive_int("n_classes", c["n_classes"])
    if c["max_epochs"] is not None:
        check_positive_int("max_epochs", c["max_epochs"])
    for key in ("lr", "ren_sigma", "ren_lam", "hint_weight"):
        if c[key] is not None and not (isinstance(c[key], (int, float)) and not isinstance(c[key], bool)
                                       and c[key] > 0) and not (key == "ren_sigma" and c[key] == "auto"):
            also = " or 'auto'" if key == "ren_sigma" else ""
            raise ValueError(f"rhmfast: {key} must be a number > 0{also}, got {c[key]!r}")
    for key in ("lr", "ren_sigma", "momentum", "weight_decay", "loss_threshold", "hint_weight", "ren_lam"):
        if c[key] is not None and c[key] != "auto":
            c[key] = float(c[key])  # 1 and 1.0 are one config, one hash
    for key in ("bias", "cosine", "online"):
        if c[key] is not None and not isinstance(c[key], bool):
            raise ValueError(f"rhmfast: {key} must be true or false, got {c[key]!r}")
    return c


def config_hash(config: dict) -> str:
    """The name of a run: a hash of its complete config (and of the format version)."""
    c = complete_config(config)
    hashed = {key: value for key, value in c.items() if value is not None or key not in _UNHASHED_AT_NONE}
    text = json.dumps({"format": RUN_FORMAT_VERSION, **hashed}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def learner_name(config: dict) -> str:
    """"hcnn", "fc", "ren", "<model>-<trainer>" for a non-default trainer, "ren-<features>" for the Ren
    learner with other features than the default tensor+rff (the analysis keeps learners apart by name)."""
    c = complete_config(config)
    if c["model"] == "ren" and c["ren_feature_kind"] != DEFAULTS["ren_feature_kind"]:
        return f"ren-{c['ren_feature_kind']}"
    return c["model"] if c["trainer"] == TRAINERS[c["model"]][0] else f"{c['model']}-{c['trainer']}"


def varying_keys(configs: list[dict], exclude) -> dict[str, list[str]]:
    """For each learner, the config keys (not in exclude) that take several values among its configs."""
    by_learner = {}
    for c in configs:
        # c may be a table row, from a table collected before a key existed
        by_learner.setdefault(learner_name({k: c[k] for k in DEFAULTS if k in c}), []).append(c)
    return {learner: sorted(k for k in DEFAULTS if k not in exclude and len({repr(c.get(k)) for c in group}) > 1)
            for learner, group in by_learner.items()}


def grammar_of(config: dict):
    from rhmfast.data.grammar import RHM

    c = complete_config(config)
    return RHM(c["v"], c["m"], c["s"], c["L"], c["n_classes"], seed=c["seed_rules"], rules=c["rules"])


def check_feasible(config: dict, grammar=None) -> None:
    """Refuse what cannot run, before anything runs: an impossible grammar, a grammar that does not meet
    the config's require, or a training plus test set larger than pmax (they are drawn without replacement)
    for the SGD trainers."""
    c = complete_config(config)
    grammar = grammar_of(c) if grammar is None else grammar
    if c["require"] == "assumption6" and not grammar.exact.satisfies_assumption():
        raise ValueError(f"rhmfast: seed_rules = {c['seed_rules']} does not meet require = 'assumption6' for "
                         f"v={c['v']} m={c['m']} s={c['s']} L={c['L']} rules={c['rules']!r}: "
                         f"{grammar.exact.assumption_summary()}; a sweep searches the first seed_rules that does")
    if c["model"] != "ren" and not c["online"] and c["P"] + c["n_test"] > grammar.pmax:
        raise ValueError(f"rhmfast: P + n_test = {c['P'] + c['n_test']} exceeds pmax = {grammar.pmax} for "
                         f"v={c['v']} m={c['m']} s={c['s']} L={c['L']} (training and test sets are drawn without "
                         "replacement)")


def build_model(config: dict):
    """The learner of a config, initialised from seed_model."""
    from rhmfast.models import FullyConnected, HierarchicalCNN, RenLayerwiseLearner

    c = complete_config(config)
    if c["model"] == "hcnn":
        return HierarchicalCNN(c["v"], c["width"], c["s"], c["L"], c["n_classes"], norm=c["norm"], bias=c["bias"],
                               activation=c["activation"], seed=c["seed_model"])
    if c["model"] == "fc":
        return FullyConnected(c["v"], c["s"] ** c["L"], c["width"], c["depth"], c["n_classes"], seed=c["seed_model"])
    # Distances between label posteriors shrink like m^(-1/2) per level: the bandwidth follows them.
    sigma = 1.0 if c["ren_sigma"] is None else c["ren_sigma"]
    return RenLayerwiseLearner(c["v"], c["s"], c["L"], c["n_classes"], features=c["ren_feature_kind"],
                               n_features=c["ren_features"] or 1,
                               sigma=sigma if sigma == "auto" else sigma / math.sqrt(c["m"]),
                               seed=c["seed_model"])


def sgd_epochs(config: dict) -> int:
    """max_epochs, or enough epochs for max_steps updates: small training sets need as many steps to fit."""
    c = complete_config(config)
    if c["max_epochs"] is not None:
        return c["max_epochs"]
    return max(1, math.ceil(c["max_steps"] / math.ceil(c["P"] / c["batch_size"])))


def sgd_arguments(config: dict) -> dict:
    """The keyword arguments of train_sgd / train_layerwise_sgd for a config (data and order both from
    seed_sample)."""
    c = complete_config(config)
    epochs = sgd_epochs(c)
    return dict(n_test=c["n_test"], lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"],
                batch_size=c["batch_size"], max_epochs=epochs, cosine=c["cosine"],
                loss_threshold=c["loss_threshold"], eval_every=max(1, epochs // 5), seed_data=c["seed_sample"],
                seed_order=c["seed_sample"])


def run_config(config: dict, *, device: str = "cpu", progress: bool = False):
    """Train the learner of one config on `device` and return its RunRecord (every trainer keeps its data
    on the model's device)."""
    from rhmfast.train import train_layerwise_sgd, train_ren_layerwise, train_sgd

    c = complete_config(config)
    grammar = grammar_of(c)
    check_feasible(c, grammar)
    model = build_model(c).to(device)
    if c["trainer"] == "ren":
        scale = Fraction(c["P"], sum(c["m"] ** l for l in range(1, c["L"] + 1)))  # exact stage sizes
        return train_ren_layerwise(model, grammar, scale, n_test=c["n_test"], lam=c["ren_lam"],
                                   seed_data=c["seed_sample"], progress=progress)
    if c["trainer"] == "sgd":
        return train_sgd(model, grammar, c["P"], online=c["online"], progress=progress, **sgd_arguments(c))
    return train_layerwise_sgd(model, grammar, c["P"], hints=c["trainer"] == "layerwise_hints",
                               hint_weight=c["hint_weight"], progress=progress, seed_readout=c["seed_model"],
                               **sgd_arguments(c))
