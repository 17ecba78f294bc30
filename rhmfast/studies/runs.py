"""One training run described by one flat, JSON-serialisable config: what a sweep stores, hashes and
dispatches, and what ``rhmfast train`` runs.

A config names its data: an RHM (``data = "rhm"``: v, m, s, L, n_classes, rules, seed_rules, and require:
a condition seed_rules was searched to meet; its variants production, zipf_exponent, zipf_levels, sparsity;
the task, "classify" the root label or "last-token" the last leaf, and its context) or a label hierarchy
(``data = "hierarchy"``: gate, wiring, fan_in, depth L, d, level_size, seed_rules; see ``hierarchy_of``); the
learner (model, trainer and their hyper-parameters), the training-set size P and the seeds of data
(seed_sample) and model (seed_model). ``complete_config`` fills the defaults and
resolves the automatic choices, so the stored config says everything the run depended on; its hash names
the run in the result store. The 2024 random-hierarchy-model library's options (order, replacement, optimizer,
scheduler, scheduler_time, accumulation, whiten, print_freq, stop_check, eval_at_start; model "fcn", its
fully-connected net) are keys too; at their defaults they, like the task and the grammar's variants, stay out
of the hash (``_UNHASHED_AT``) and out of train_sgd's arguments (``sgd_arguments``), so runs stored before them
keep their names and run as they did.
Where a run is executed (device, threads) is not part of the config: it must not change which experiment a
record is.
"""
from __future__ import annotations

import hashlib
import json
import math
from fractions import Fraction

from rhmfast._checks import check_choice, check_int, check_positive_int
from rhmfast.data import variants
from rhmfast.data.hierarchy import GATES, WIRINGS
from rhmfast.data.tasks import TASKS, make_task
from rhmfast.models.hcnn import ACTIVATIONS as HCNN_ACTIVATIONS
from rhmfast.models.hcnn import NORMS
from rhmfast.models.ren import FEATURES as REN_FEATURES
from rhmfast.models.residual import ACTIVATIONS as RESIDUAL_ACTIVATIONS

RUN_FORMAT_VERSION = 1  # part of every hash: a change of what a config means gets new run names

DATA = ("rhm", "hierarchy")
MODELS = ("hcnn", "hlcn", "fc", "fcn", "mla", "encoder", "ren", "residual", "mlp")
MODELS_OF = {"rhm": ("hcnn", "hlcn", "fc", "fcn", "mla", "encoder", "ren"), "hierarchy": ("residual", "mlp")}
TRAINERS = {"hcnn": ("sgd", "layerwise", "layerwise_hints"), "hlcn": ("sgd",), "fc": ("sgd",), "fcn": ("sgd",),
            "mla": ("sgd",), "encoder": ("sgd",), "ren": ("ren",), "residual": ("layerwise", "e2e_all", "e2e_top"),
            "mlp": ("e2e_top",)}
# The models trained end to end on token ids by train_sgd, whose shape follows the data (model_shape).
TOKEN_MODELS = ("hcnn", "hlcn", "fc", "fcn", "mla", "encoder")
TRANSFORMERS = ("mla", "encoder")
SAMPLERS = ("pcsl", "pcsl-2023", "first-token-uniform")
REQUIREMENTS = (None, "assumption6")
# The grammar's variants with their defaults: grammar_of passes one to the RHM only where it differs.
VARIANTS = dict(production="uniform", zipf_exponent=None, zipf_levels=None, sparsity=0)
ORDERS = ("rhmfast", "pcsl")  # rhmfast's own draw of the training and test sets, or the 2024 library's
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = (None, "cosine", "warmup")  # the 2024 library's --scheduler (None: constant learning rate)

DEFAULTS = dict(
    data="rhm",
    # grammar; require "assumption6": seed_rules must give a grammar that satisfies Ren et al.'s Assumption 6
    # (a sweep searches the first such seed >= the one given)
    v=8, m=2, s=2, L=3, n_classes=None, rules="pcsl", seed_rules=0, require=None,
    # the grammar's variants (RHM's options): production "zipf" (rule i of a symbol has probability proportional to
    # (i+1)^-(1+zipf_exponent) at the levels zipf_levels, None: all; its samples are iid, so SGD needs
    # replacement=true or online=true), sparsity s0 > 0 (the sparse RHM: every child in one of s0+1 slots, the
    # others blank)
    production="uniform", zipf_exponent=None, zipf_levels=None, sparsity=0,
    # the task: "classify" (the root label is the target) or "last-token" (the last leaf, hidden, is the target;
    # context: the window of the last context leaves the input keeps, the hidden one included; None: all)
    task="classify", context=None,
    # label hierarchy (Daniely): L levels of gates of fan_in arguments, drawn from seed_rules; wiring "tree":
    # d inputs (default fan_in^L), level i holds d / fan_in^i labels; "random": d inputs and level_size labels
    # per level, each reading fan_in distinct labels (inputs) of the level below
    gate="parity", wiring="tree", fan_in=2, d=None, level_size=None,
    # data and seeds: samples are drawn from the stream seed_sample, the model initialised from seed_model
    P=None, n_test=2048, seed_sample=0, seed_model=0,
    # learner: model None is hcnn on an RHM, residual on a hierarchy; trainer "auto" is sgd for hcnn and fc, ren for the Ren learner, layerwise for the residual
    # learner, e2e_top for the shallow MLP; width and activation None: the model's default (MODEL_DEFAULTS)
    # hlcn: the hcnn's tree with untied weights (LocallyConnected); mla, encoder: the transformers (AttentionOnly,
    # Encoder) with embedding dimension width, depth layers (None: L) and heads heads
    model=None, trainer="auto", width=None, depth=None, norm="mf", bias=False, activation=None, hint_weight=1.0,
    heads=None,
    # SGD (the reference recipe; the hierarchy learners' end-to-end trainers use Adam); lr None: 0.1 for SGD,
    # 1e-3 for Adam; max_epochs None: ceil(max_steps / steps per epoch) epochs
    lr=None, momentum=0.9, weight_decay=0.0, batch_size=128, max_steps=3000, max_epochs=None,
    loss_threshold=1e-3, cosine=False, online=False,
    # the 2024 library's options (rhmfast train takes its flags): order "pcsl" draws its training and test sets
    # (RHM.split(order=...)), replacement its with-replacement draw; optimizer "adam"; scheduler "cosine"
    # (eta_min 0.1 lr, period scheduler_time, None: max_epochs) or "warmup" (cosine with scheduler_time warm-up
    # epochs); accumulation: one step per epoch on the whole training set's gradient. whiten: the inputs
    # (onehot - 1/v) / sqrt(1 - 1/v) (--whitening 1). Test evaluations: every eval_every epochs (None:
    # max_epochs // 5, at least 1), or with print_freq at the library's print checkpoints (a few log-spaced
    # epochs below print_freq when it is >= 10, then its multiples); stop_check "eval" checks loss_threshold
    # only at evaluations (the library's rule), "epoch" after every epoch; eval_at_start adds the library's
    # epoch-0 point (train and test loss of the untrained model).
    order="rhmfast", replacement=False, optimizer="sgd", scheduler=None, scheduler_time=None, accumulation=False,
    whiten=False, eval_every=None, print_freq=None, stop_check="epoch", eval_at_start=False,
    # the residual layerwise learner's closed-form read-outs: ridge penalty (relative to the features' variance)
    ridge=1e-2,
    # Ren et al.: P is the total of the stages' fresh samples, N^(l) proportional to m^l
    # ren_lam None: the ridge penalty 1/(v m) of Ren et al. ren_sigma: the RBF bandwidth above the input level
    # times sqrt(m), or "auto" (per level, from the measured clusters of its embeddings); ren_features: the
    # number M of random Fourier features (rff kinds only)
    ren_features=512, ren_sigma=0.28, ren_feature_kind="tensor+rff", ren_lam=None,
)

_SGD = ("lr", "momentum", "weight_decay", "batch_size", "max_steps", "max_epochs", "loss_threshold", "cosine", "online",
        "order", "replacement", "optimizer", "scheduler", "scheduler_time", "accumulation", "whiten", "eval_every",
        "print_freq", "stop_check", "eval_at_start")
# The 2024 library's options that only end-to-end SGD (train_sgd) takes, at their defaults.
_SGD_ONLY = dict(order="rhmfast", replacement=False, optimizer="sgd", scheduler=None, scheduler_time=None,
                 accumulation=False, print_freq=None, stop_check="epoch", eval_at_start=False)
STOP_CHECKS = ("epoch", "eval")
_REN = ("ren_features", "ren_sigma", "ren_feature_kind", "ren_lam")
_ADAM = ("width", "activation", "lr", "weight_decay", "batch_size", "max_steps", "max_epochs", "loss_threshold")
# The parameters each learner reads; complete_config sets the others to None, so that a parameter a run
# ignores never makes two names for one run.
USED_BY = {"hcnn": ("width", "norm", "bias", "activation", "hint_weight") + _SGD,
           "hlcn": ("width", "norm", "bias", "activation") + _SGD, "fc": ("width", "depth") + _SGD,
           "fcn": ("width", "depth", "norm", "bias") + _SGD, "mla": ("width", "depth", "heads") + _SGD,
           "encoder": ("width", "depth", "heads") + _SGD,
           "ren": _REN, "residual": _ADAM + ("ridge",), "mlp": _ADAM}
_LEARNER_KEYS = {key for keys in USED_BY.values() for key in keys}
MODEL_DEFAULTS = {"hcnn": dict(width=64, activation="relu", lr=0.1), "hlcn": dict(width=64, activation="relu", lr=0.1),
                  "fc": dict(width=64, depth=1, lr=0.1), "fcn": dict(width=64, depth=1, lr=0.1),
                  # the references' transformer recipe: SGD, lr 0.1 (not scaled by the width), momentum 0.9
                  "mla": dict(width=128, heads=4, lr=0.1), "encoder": dict(width=128, heads=4, lr=0.1),
                  "residual": dict(width=4096, activation="quadratic", lr=1e-3),
                  "mlp": dict(width=1024, activation="relu", lr=1e-3)}
# The parameters each data model reads (L and seed_rules both do).
DATA_KEYS = {"rhm": ("v", "m", "s", "n_classes", "rules", "require", "production", "zipf_exponent", "zipf_levels",
                     "sparsity", "task", "context"),
             "hierarchy": ("gate", "wiring", "fan_in", "d", "level_size")}
_DATA_KEYS = {key for keys in DATA_KEYS.values() for key in keys}

# The choice-valued parameters of each learner and their allowed values; a learner that does not read one
# still refuses a value no learner allows (a typo never passes because the model at hand ignores it).
CHOICES = {"hcnn": dict(norm=tuple(NORMS), activation=tuple(HCNN_ACTIVATIONS)),
           "hlcn": dict(norm=tuple(NORMS), activation=tuple(HCNN_ACTIVATIONS)), "fcn": dict(norm=tuple(NORMS)),
           "ren": dict(ren_feature_kind=tuple(REN_FEATURES)),
           "residual": dict(activation=tuple(RESIDUAL_ACTIVATIONS)),
           "mlp": dict(activation=tuple(RESIDUAL_ACTIVATIONS))}
_ANY_CHOICE = {key: tuple(dict.fromkeys(value for choices in CHOICES.values() for value in choices.get(key, ())))
               for key in ("norm", "activation", "ren_feature_kind")}
POSITIVE_INT_KEYS = ("v", "m", "s", "L", "P", "n_test", "width", "depth", "heads", "batch_size", "max_steps",
                     "ren_features", "fan_in", "scheduler_time", "eval_every", "print_freq")
SEED_KEYS = ("seed_rules", "seed_sample", "seed_model")
# Keys added after runs were stored: at these values they stay out of the hash, so the stored runs keep
# their names (None too for the learner keys: a learner that does not read one has it None).
_UNHASHED_AT = dict(require=(None,), data=("rhm",), gate=(None,), wiring=(None,), fan_in=(None,), d=(None,),
                    level_size=(None,), ridge=(None,), order=("rhmfast", None), replacement=(False, None),
                    optimizer=("sgd", None), scheduler=(None,), scheduler_time=(None,), accumulation=(False, None),
                    whiten=(False, None), eval_every=(None,), print_freq=(None,), stop_check=("epoch", None),
                    eval_at_start=(False, None), production=("uniform", None), zipf_exponent=(None,),
                    zipf_levels=(None,), sparsity=(0, None), task=("classify", None), context=(None,),
                    heads=(None,))


def complete_config(config: dict) -> dict:
    """The config with defaults filled in, automatic choices resolved and the parameters its learner
    does not read set to None (idempotent); ValueError names a bad key and its allowed values."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"rhmfast: unknown run parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
    c = {**DEFAULTS, **config}
    if c["P"] is None:
        raise ValueError("rhmfast: P (the training-set size) must be given")
    check_choice("data", c["data"], DATA)
    if c["model"] is None:
        c["model"] = MODELS_OF[c["data"]][0]
    check_choice(f"model (for data {c['data']!r})", c["model"], MODELS_OF[c["data"]])
    c = {key: (value if key not in _DATA_KEYS or key in DATA_KEYS[c["data"]] else None) for key, value in c.items()}
    if c["data"] == "rhm":
        check_choice("rules", c["rules"], SAMPLERS)
        check_choice("require", c["require"], REQUIREMENTS)
    else:
        check_choice("gate", c["gate"], GATES)
        check_choice("wiring", c["wiring"], WIRINGS)
        for key in ("d", "level_size"):
            if c[key] is not None:
                check_positive_int(key, c[key])
    for key, value in MODEL_DEFAULTS.get(c["model"], {}).items():
        if c[key] is None:
            c[key] = value
    if c["whiten"] and c["model"] in ("hlcn", *TRANSFORMERS):
        raise ValueError(f"rhmfast: whiten is an option of the hcnn, fc and fcn (the 2024 library's --whitening); "
                         f"model {c['model']!r} takes token ids as they are")
    if c["model"] in TRANSFORMERS:
        if c["depth"] is None:
            c["depth"] = c["L"]  # one block per level of the tree
        for key in ("width", "heads"):
            check_positive_int(key, c[key])
        if c["width"] % c["heads"]:
            raise ValueError(f"rhmfast: heads must divide the embedding dimension width = {c['width']} (model "
                             f"{c['model']!r}), got heads = {c['heads']}")
    if c["trainer"] == "auto":
        c["trainer"] = TRAINERS[c["model"]][0]
    check_choice(f"trainer (for model {c['model']!r})", c["trainer"], TRAINERS[c["model"]])
    used = set(USED_BY[c["model"]]) - ({"hint_weight"} if c["trainer"] != "layerwise_hints" else set())
    if c["model"] == "residual":  # layerwise: closed-form read-outs; end to end: Adam, no ridge
        used -= set(_ADAM[2:]) if c["trainer"] == "layerwise" else {"ridge"}
    if c["model"] == "ren":
        kind = check_choice("ren_feature_kind", c["ren_feature_kind"], REN_FEATURES)
        used -= set() if kind in ("rff", "tensor+rff") else {"ren_features"}
        used -= set() if kind in ("rff", "tensor+rff", "kernel", "tensor+kernel") else {"ren_sigma"}
    for key, allowed in (("order", ORDERS), ("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS),
                         ("stop_check", STOP_CHECKS)):
        if c[key] is not None or key == "scheduler":
            check_choice(key, c[key], allowed)
    for key in ("replacement", "accumulation", "whiten", "eval_at_start"):
        if c[key] is not None and not isinstance(c[key], bool):
            raise ValueError(f"rhmfast: {key} must be true or false, got {c[key]!r}")
    for key in ("order", "replacement", "optimizer", "accumulation", "whiten", "stop_check", "eval_at_start"):
        if c[key] is None and key in used:  # None: not read (a config completed for another learner)
            c[key] = DEFAULTS[key]
    if c["model"] == "fcn" and c["depth"] == 0 and not isinstance(c["depth"], bool):
        used -= {"width"}  # depth 0: the reference's perceptron, no hidden layer
    for key, allowed in _ANY_CHOICE.items():
        if key in used and key in CHOICES.get(c["model"], {}):
            check_choice(f"{key} (for model {c['model']!r})", c[key], CHOICES[c["model"]][key])
        elif c[key] is not None:
            check_choice(key, c[key], allowed)
    c = {key: (value if key not in _LEARNER_KEYS or key in used else None) for key, value in c.items()}
    for key in POSITIVE_INT_KEYS:
        if key == "depth" and c["model"] == "fcn" and c["depth"] == 0 and not isinstance(c["depth"], bool):
            continue  # the reference's perceptron
        if c[key] is not None or (key not in _LEARNER_KEYS and (key not in _DATA_KEYS or key in DATA_KEYS[c["data"]])):
            check_positive_int(key, c[key])
    if "order" in used:
        _check_library_options(c)
    for key in SEED_KEYS:
        if isinstance(c[key], bool) or not isinstance(c[key], int) or c[key] < 0:
            raise ValueError(f"rhmfast: {key} must be an int >= 0, got {c[key]!r}")
    if c["data"] == "rhm":
        c["n_classes"] = c["v"] if c["n_classes"] is None else check_positive_int("n_classes", c["n_classes"])
        _check_rhm(c)
    if c["max_epochs"] is not None:
        check_positive_int("max_epochs", c["max_epochs"])
    for key in ("lr", "ren_sigma", "ren_lam", "hint_weight", "ridge"):
        if c[key] is not None and not (isinstance(c[key], (int, float)) and not isinstance(c[key], bool)
                                       and 0 < c[key] < math.inf) and not (key == "ren_sigma" and c[key] == "auto"):
            also = " or 'auto'" if key == "ren_sigma" else ""
            raise ValueError(f"rhmfast: {key} must be a number > 0{also} (finite), got {c[key]!r}")
    for key in ("momentum", "weight_decay", "loss_threshold"):
        if c[key] is not None and not (isinstance(c[key], (int, float)) and not isinstance(c[key], bool)
                                       and 0 <= c[key] < math.inf):
            raise ValueError(f"rhmfast: {key} must be a finite number >= 0, got {c[key]!r}")
    for key in ("lr", "ren_sigma", "momentum", "weight_decay", "loss_threshold", "hint_weight", "ren_lam", "ridge"):
        if c[key] is not None and c[key] != "auto":
            c[key] = float(c[key])  # 1 and 1.0 are one config, one hash
    for key in ("bias", "cosine", "online"):
        if c[key] is not None and not isinstance(c[key], bool):
            raise ValueError(f"rhmfast: {key} must be true or false, got {c[key]!r}")
    return c


def _check_rhm(c: dict) -> None:
    """The grammar's variants and the task of an RHM config c, in place: the variants as the RHM checks them
    (zipf_levels then a sorted list), context only for "last-token" (None resolved to the whole string, s^L);
    and a learner that can run on them: last-token prediction is end-to-end SGD's (TOKEN_MODELS); Zipf
    productions draw iid samples only (replacement=true or online=true for SGD; not the layerwise trainers, whose
    sets are drawn without replacement); the sparse RHM's inputs are neither the Ren learner's nor the hints'."""
    c["production"] = variants.check_production(c["production"])
    c["zipf_exponent"] = variants.check_zipf_exponent(c["zipf_exponent"], c["production"])
    levels = variants.check_zipf_levels(c["zipf_levels"], c["L"], c["production"])
    c["zipf_levels"] = None if levels is None else list(levels)  # as JSON stores it: one hash
    c["sparsity"] = variants.check_sparsity(c["sparsity"])
    zipf, sparse = c["production"] == "zipf", c["sparsity"] > 0
    if (zipf or sparse) and c["order"] == "pcsl":
        raise ValueError("rhmfast: order 'pcsl' draws the 2024 library's sets, and the library has neither Zipf "
                         "productions nor sparse inputs; use order 'rhmfast'")
    if zipf and c["require"] is not None:
        raise ValueError(f"rhmfast: require = {c['require']!r} searches seeds of uniform grammars; it cannot be "
                         "combined with production 'zipf'")
    if zipf and c["trainer"] in ("layerwise", "layerwise_hints"):
        raise ValueError(f"rhmfast: production 'zipf' draws iid samples only; trainer {c['trainer']!r} draws its "
                         "training and test sets without replacement: use trainer 'sgd' with replacement=true")
    if zipf and c["trainer"] == "sgd" and not c["online"] and not c["replacement"]:
        raise ValueError("rhmfast: production 'zipf' draws iid samples only: give replacement=true (the training "
                         "and test sets may then share samples) or online=true")
    if sparse and (c["model"] == "ren" or c["trainer"] == "layerwise_hints"):
        raise ValueError(f"rhmfast: the sparse RHM (sparsity = {c['sparsity']}) is learned by the models on token "
                         f"ids {TOKEN_MODELS} (trainer 'sgd', or 'layerwise' for the hcnn), not by model "
                         f"{c['model']!r} with trainer {c['trainer']!r}")
    check_choice("task", c["task"], TASKS)
    if c["task"] == "classify":
        if c["context"] is not None:
            raise ValueError(f"rhmfast: context is an option of task 'last-token', not of 'classify'; leave it out, "
                             f"got {c['context']!r}")
        return
    if sparse:
        raise ValueError(f"rhmfast: task 'last-token' is not defined for the sparse RHM (sparsity = {c['sparsity']}: "
                         "its last leaf is mostly blank); use sparsity 0 or task 'classify'")
    if c["trainer"] != "sgd":
        raise ValueError(f"rhmfast: task 'last-token' is learned end to end (trainer 'sgd' of a model in "
                         f"{TOKEN_MODELS}); model {c['model']!r} with trainer {c['trainer']!r} learns the root label "
                         "(task 'classify')")
    length = c["s"] ** c["L"]
    c["context"] = length if c["context"] is None else check_int("context", c["context"], 1, length)


def _check_library_options(c: dict) -> None:
    """The 2024 library's options of an SGD learner's completed config c: end-to-end SGD only, offline data for
    the data options, one cosine schedule; scheduler_time set to None where no scheduler reads it (in place)."""
    given = [key for key, default in _SGD_ONLY.items() if c[key] != default]
    if c["trainer"] != "sgd" and given:
        raise ValueError(f"rhmfast: {', '.join(given)} {'is an option' if len(given) == 1 else 'are options'} of "
                         f"end-to-end SGD (trainer 'sgd'), not of trainer {c['trainer']!r}; leave "
                         f"{'it' if len(given) == 1 else 'them'} at the default "
                         f"({', '.join(f'{k}={_SGD_ONLY[k]!r}' for k in given)})")
    if c["online"] and (c["order"] != "rhmfast" or c["replacement"]):
        raise ValueError("rhmfast: online=true draws fresh samples every epoch; order and replacement choose a fixed "
                         "training set: use online=false with them")
    if c["cosine"] and c["scheduler"] is not None:
        raise ValueError(f"rhmfast: cosine=true (rhmfast's schedule: cosine to 0 over max_epochs) and scheduler="
                         f"{c['scheduler']!r} (the 2024 library's) both set a schedule; give one")
    if c["scheduler"] is None:
        c["scheduler_time"] = None  # read by no schedule: one name for one run
    if c["print_freq"] is not None and c["eval_every"] is not None:
        raise ValueError("rhmfast: eval_every (every that many epochs) and print_freq (the 2024 library's print "
                         "checkpoints) both set when the test set is evaluated; give one")
    if c["online"] and c["eval_at_start"]:
        raise ValueError("rhmfast: eval_at_start evaluates the training set, which online training does not have")


def config_hash(config: dict) -> str:
    """The name of a run: a hash of its complete config (and of the format version)."""
    c = complete_config(config)
    hashed = {key: value for key, value in c.items()
              if key not in _UNHASHED_AT or not any(_same(value, v) for v in _UNHASHED_AT[key])}
    text = json.dumps({"format": RUN_FORMAT_VERSION, **hashed}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _same(a, b) -> bool:
    """Equal and of the same type (False is not 0)."""
    return type(a) is type(b) and a == b


def learner_name(config: dict) -> str:
    """"hcnn", "fc", "ren", "residual", "mlp", "<model>-<trainer>" for a non-default trainer, "ren-<features>" for the Ren
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
    """The RHM of a config; its variants (production, zipf_exponent, zipf_levels, sparsity) are passed only where
    they differ from their defaults."""
    from rhmfast.data.grammar import RHM

    c = complete_config(config)
    options = {key: c[key] for key, default in VARIANTS.items() if c[key] != default}
    return RHM(c["v"], c["m"], c["s"], c["L"], c["n_classes"], seed=c["seed_rules"], rules=c["rules"], **options)


def hierarchy_of(config: dict):
    """The label hierarchy of a config with data = "hierarchy": L levels of gates of fan_in arguments, seed
    seed_rules. wiring "tree": d inputs (None: fan_in^L; else a multiple of fan_in^L), level i holding
    d / fan_in^i labels; "random": d inputs and level_size labels per level (both needed)."""
    from rhmfast.data.hierarchy import LabelHierarchy

    c = complete_config(config)
    if c["data"] != "hierarchy":
        raise ValueError(f"rhmfast: hierarchy_of needs data = 'hierarchy', got {c['data']!r}")
    fan_in, depth = c["fan_in"], c["L"]
    if c["wiring"] == "tree":
        d = fan_in**depth if c["d"] is None else c["d"]
        if d % fan_in**depth:
            raise ValueError(f"rhmfast: d must be a multiple of fan_in^L = {fan_in**depth} for wiring='tree', got {d}")
        if c["level_size"] is not None:
            raise ValueError("rhmfast: level_size is set by d and fan_in for wiring='tree'; leave it out")
        sizes = [d // fan_in**i for i in range(1, depth + 1)]
    else:
        if c["d"] is None or c["level_size"] is None:
            raise ValueError("rhmfast: wiring='random' needs d (inputs) and level_size (labels per level)")
        d, sizes = c["d"], [c["level_size"]] * depth
    return LabelHierarchy(d, sizes, fan_in, gate=c["gate"], wiring=c["wiring"], seed=c["seed_rules"])


def data_of(config: dict):
    """The data model of a config: the task on its RHM (``rhmfast.data.make_task``: the RHM itself for task
    "classify", a ``LastToken`` for "last-token") or its label hierarchy."""
    c = complete_config(config)
    return make_task(grammar_of(c), c["task"], c["context"]) if c["data"] == "rhm" else hierarchy_of(c)


def model_shape(config: dict, data=None) -> tuple[int, int, int, int]:
    """(input_vocab, patch_size, input_dim, n_classes) of an RHM config's data: the token ids a model embeds, its
    patch, the input's length and the number of targets. data: the config's data model, if already built."""
    data = data_of(config) if data is None else data
    return data.input_vocab, data.patch_size, data.input_dim, data.n_classes


def check_feasible(config: dict, grammar=None) -> None:
    """Refuse what cannot run, before anything runs: an impossible grammar or hierarchy, a grammar that
    does not meet the config's require, or a training plus test set larger than pmax (they are drawn
    without replacement; Zipf productions draw iid samples, with replacement) for the SGD trainers. grammar:
    the config's data model (its RHM, a task on it, or its label hierarchy), if already built."""
    c = complete_config(config)
    if c["data"] == "hierarchy":
        if grammar is None:
            hierarchy_of(c)
        return
    grammar = grammar_of(c) if grammar is None else getattr(grammar, "grammar", grammar)
    if c["require"] == "assumption6" and not grammar.exact.satisfies_assumption():
        raise ValueError(f"rhmfast: seed_rules = {c['seed_rules']} does not meet require = 'assumption6' for "
                         f"v={c['v']} m={c['m']} s={c['s']} L={c['L']} rules={c['rules']!r}: "
                         f"{grammar.exact.assumption_summary()}; a sweep searches the first seed_rules that does")
    pcsl_replaces = c["order"] == "pcsl" and grammar.pmax > 10**19  # the library samples with replacement there
    if c["model"] != "ren" and not c["online"] and not c["replacement"] and not pcsl_replaces \
            and c["P"] + c["n_test"] > grammar.pmax:
        raise ValueError(f"rhmfast: P + n_test = {c['P'] + c['n_test']} exceeds pmax = {grammar.pmax} for "
                         f"v={c['v']} m={c['m']} s={c['s']} L={c['L']} (training and test sets are drawn without "
                         "replacement)")
    if c["order"] == "pcsl" and not c["replacement"] and 2**63 <= grammar.pmax <= 10**19:
        raise ValueError(f"rhmfast: order 'pcsl' without replacement needs pmax < 2^63 (the 2024 library's "
                         f"random.sample(range(pmax), ...) fails beyond), got pmax = {grammar.pmax} for v={c['v']} "
                         f"m={c['m']} s={c['s']} L={c['L']}; add replacement=true for its with-replacement draw")


def build_model(config: dict, data=None):
    """The learner of a config, initialised from seed_model. data: the config's data model (``data_of``), if
    already built (run_config has it; a hierarchy's construction samples to check its balance). The models on
    token ids (TOKEN_MODELS) take their shape from the data (``model_shape``): the ids they embed, the patch, the
    input's length and the number of targets."""
    from rhmfast.models import (AttentionOnly, Encoder, FullyConnected, HierarchicalCNN, LocallyConnected,
                                RenLayerwiseLearner, ResidualLayerwiseNet, ShallowMLP)

    c = complete_config(config)
    if c["model"] == "residual":
        # layerwise: frozen random features and thresholded writes (the theory's); end to end: every block
        # trained, tanh writes so that the gradient passes
        layerwise = c["trainer"] == "layerwise"
        return ResidualLayerwiseNet(data or hierarchy_of(c), width=c["width"], activation=c["activation"],
                                    features="random" if layerwise else "trained", write="sign" if layerwise else "tanh",
                                    seed=c["seed_model"])
    if c["model"] == "mlp":
        hierarchy = data or hierarchy_of(c)
        return ShallowMLP(hierarchy.d, len(hierarchy.levels[-1]), c["width"], c["activation"], seed=c["seed_model"])
    # whiten is passed only when set: models without the option build as before
    whiten = dict(whiten=True) if c["whiten"] else {}
    if c["model"] in TOKEN_MODELS:
        vocab, patch, length, n_out = model_shape(c, data)
    if c["model"] == "hcnn":
        return HierarchicalCNN(vocab, c["width"], patch, c["L"], n_out, norm=c["norm"], bias=c["bias"],
                               activation=c["activation"], seed=c["seed_model"], **whiten)
    if c["model"] == "hlcn":
        return LocallyConnected(vocab, c["width"], patch, c["L"], n_out, norm=c["norm"], bias=c["bias"],
                                activation=c["activation"], seed=c["seed_model"])
    if c["model"] in TRANSFORMERS:
        transformer = AttentionOnly if c["model"] == "mla" else Encoder
        return transformer(vocab, length, n_out, c["width"], c["heads"], c["depth"], seed=c["seed_model"])
    if c["model"] == "fc":
        return FullyConnected(vocab, length, c["width"], c["depth"], n_out, seed=c["seed_model"], **whiten)
    if c["model"] == "fcn":  # the 2024 library's fcn: N(0,1) weights, 1/sqrt(fan_in) layers, readout / H (mf)
        return FullyConnected(vocab, length, c["width"], c["depth"], n_out, seed=c["seed_model"], norm=c["norm"],
                              bias=c["bias"], **whiten)
    # Distances between label posteriors shrink like m^(-1/2) per level: the bandwidth follows them.
    sigma = 1.0 if c["ren_sigma"] is None else c["ren_sigma"]
    return RenLayerwiseLearner(c["v"], c["s"], c["L"], c["n_classes"], features=c["ren_feature_kind"],
                               n_features=c["ren_features"] or 1,
                               sigma=sigma if sigma == "auto" else sigma / math.sqrt(c["m"]),
                               seed=c["seed_model"])


def stage_size(config: dict) -> int:
    """The residual layerwise learner's samples per stage: ceil(P / L), so P counts all stages' samples."""
    c = complete_config(config)
    return -(-c["P"] // c["L"])


def sgd_epochs(config: dict) -> int:
    """max_epochs, or enough epochs for max_steps updates: small training sets need as many steps to fit."""
    c = complete_config(config)
    if c["max_epochs"] is not None:
        return c["max_epochs"]
    return max(1, math.ceil(c["max_steps"] / math.ceil(c["P"] / c["batch_size"])))


def eval_every(config: dict) -> int | list[int]:
    """When the test set is evaluated, as train_sgd's eval_every: every eval_every epochs (None: max_epochs // 5,
    at least 1), or with print_freq the list of the 2024 library's print checkpoints up to the last epoch."""
    c = complete_config(config)
    if c["print_freq"] is not None:
        return print_checkpoints(c["print_freq"], sgd_epochs(c))
    return c["eval_every"] if c["eval_every"] is not None else max(1, sgd_epochs(c) // 5)


def print_checkpoints(step: int, end: int, fill: bool | None = None) -> list[int]:
    """The epochs up to end at which the 2024 library's main.py prints (and evaluates): init.py's
    init_loglinckpt(step, end, fill) (``rhmfast.train.loop.reference_checkpoints``), fill = step >= 10 as main.py
    calls it; [end] if there is none (train_sgd evaluates at the last epoch anyway). Its save checkpoints are
    print_checkpoints(save_freq, end, fill=False)."""
    from rhmfast.train.loop import reference_checkpoints

    fill = step >= 10 if fill is None else fill
    return [epoch for epoch in reference_checkpoints(step, end, fill=fill) if epoch <= end] or [end]


def sgd_arguments(config: dict) -> dict:
    """The keyword arguments of train_sgd / train_layerwise_sgd for a config (data and order both from
    seed_sample). The 2024 library's options (order, replacement, optimizer, scheduler, scheduler_time,
    accumulation, stop_check, eval_at_start: train_sgd's) are passed only when they differ from their
    defaults, so a config that leaves them alone runs on a trainer without them; print_freq becomes the
    eval_every list of its print checkpoints."""
    c = complete_config(config)
    epochs = sgd_epochs(c)
    arguments = dict(n_test=c["n_test"], lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"],
                     batch_size=c["batch_size"], max_epochs=epochs, cosine=c["cosine"],
                     loss_threshold=c["loss_threshold"], eval_every=eval_every(c), seed_data=c["seed_sample"],
                     seed_order=c["seed_sample"])
    arguments.update({key: c[key] for key, default in _SGD_ONLY.items()
                      if key != "print_freq" and c[key] is not None and c[key] != default})
    return arguments


def check_runnable(configs: list[dict]) -> None:
    """The 2024 library's options the configs use (end-to-end SGD) are options of this build's train_sgd, else
    a ValueError (check_trainer_takes), before anything runs."""
    from rhmfast.train import train_sgd

    used = {key: c[key] for c in configs if c["trainer"] == "sgd" and "order" in USED_BY[c["model"]]
            for key, default in _SGD_ONLY.items() if key != "print_freq" and c[key] is not None and c[key] != default}
    check_trainer_takes(train_sgd, used)


def check_trainer_takes(trainer, arguments: dict) -> None:
    """ValueError naming the keyword arguments (the 2024 library's options) that this build's trainer does not
    take: a config that needs them is refused before anything runs, not by a TypeError in a worker."""
    import inspect

    parameters = inspect.signature(trainer).parameters
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        return
    missing = [key for key in arguments if key not in parameters]
    if missing:
        raise ValueError(f"rhmfast: {trainer.__name__} of this build has no option {', '.join(missing)}; run "
                         f"without {', '.join(f'{k}={arguments[k]!r}' for k in missing)}")


def run_config(config: dict, *, device: str = "cpu", progress: bool = False, checkpoint: str | None = None,
               checkpoint_every: int = 0):
    """Train the learner of one config on `device` and return its RunRecord (every trainer keeps its data
    on the model's device). checkpoint, checkpoint_every: train_sgd's (end-to-end SGD only): the run's state
    saved every checkpoint_every epochs to the file checkpoint, resumed from it when it exists."""
    if checkpoint is not None and complete_config(config)["trainer"] != "sgd":
        raise ValueError(f"rhmfast: checkpoints are written by end-to-end SGD runs (trainer 'sgd') only, not trainer "
                         f"{complete_config(config)['trainer']!r}")
    from rhmfast.train import (train_hierarchy_end_to_end, train_layerwise_sgd, train_ren_layerwise,
                               train_residual_layerwise, train_sgd)

    c = complete_config(config)
    if c["data"] == "hierarchy":
        hierarchy = hierarchy_of(c)
        model = build_model(c, hierarchy).to(device)
        if c["trainer"] == "layerwise":  # P: the total of the stages' fresh samples
            return train_residual_layerwise(model, hierarchy, stage_size(c), ridge=c["ridge"], n_test=c["n_test"],
                                            seed_data=c["seed_sample"], seed_order=c["seed_sample"],
                                            progress=progress)
        return train_hierarchy_end_to_end(model, hierarchy, c["P"], labels=c["trainer"][len("e2e_"):], lr=c["lr"],
                                          batch_size=c["batch_size"], epochs=sgd_epochs(c),
                                          weight_decay=c["weight_decay"], loss_threshold=c["loss_threshold"],
                                          eval_every=max(1, sgd_epochs(c) // 5), n_test=c["n_test"],
                                          seed_data=c["seed_sample"], seed_order=c["seed_sample"], progress=progress)
    grammar = grammar_of(c)
    check_feasible(c, grammar)
    data = make_task(grammar, c["task"], c["context"])
    model = build_model(c, data).to(device)
    if c["trainer"] == "ren":
        scale = Fraction(c["P"], sum(c["m"] ** l for l in range(1, c["L"] + 1)))  # exact stage sizes
        return train_ren_layerwise(model, grammar, scale, n_test=c["n_test"], lam=c["ren_lam"],
                                   seed_data=c["seed_sample"], progress=progress)
    if c["trainer"] == "sgd":
        arguments = sgd_arguments(c)
        if checkpoint is not None:
            arguments.update(checkpoint=checkpoint, checkpoint_every=checkpoint_every)
        check_trainer_takes(train_sgd, arguments)
        return train_sgd(model, data, c["P"], online=c["online"], progress=progress, **arguments)
    return train_layerwise_sgd(model, grammar, c["P"], hints=c["trainer"] == "layerwise_hints",
                               hint_weight=c["hint_weight"], progress=progress, seed_readout=c["seed_model"],
                               **sgd_arguments(c))


# What may differ between the runs of one pack (one replica-batched training): the seeds and P. Everything
# else (grammar, architecture, optimiser settings) is the pack's.
PACK_FREE_KEYS = ("P", "seed_sample", "seed_model")


def pack_key(config: dict) -> str | None:
    """The key of the runs a config can be trained with as one replica pack (``run_pack``), or None for a run
    that always trains alone: end-to-end SGD of the hCNN on an RHM is packed, with optimizer "sgd" and
    without gradient accumulation (train_sgd_replicas' scope); other learners and options run one by one."""
    c = complete_config(config)
    if (c["data"], c["model"], c["trainer"], c["optimizer"], c["accumulation"]) != ("rhm", "hcnn", "sgd", "sgd",
                                                                                   False):
        return None
    return json.dumps({k: v for k, v in c.items() if k not in PACK_FREE_KEYS}, sort_keys=True, default=str)


def run_pack(configs: list[dict], *, device: str = "cpu", progress: bool = False, on_stop=None,
             exact: bool = True) -> list:
    """Train configs that share one pack_key as one replica-batched model (``train_sgd_replicas``); returns
    their RunRecords in order, each what ``run_config`` returns for that config alone (same data, order and
    initial weights; the same bits with exact=True, see train_sgd_replicas). on_stop(i, record) runs as soon as
    configs[i]'s run has ended."""
    from rhmfast.models import HierarchicalCNN
    from rhmfast.train.replicas import train_sgd_replicas

    cs = [complete_config(c) for c in configs]
    keys = {pack_key(c) for c in cs}
    if None in keys or len(keys) != 1:
        raise ValueError("rhmfast: a pack's configs must be packable (pack_key not None) and differ only in "
                         f"{', '.join(PACK_FREE_KEYS)}")
    c = cs[0]
    grammar = grammar_of(c)
    for config in cs:
        check_feasible(config, grammar)
    data = make_task(grammar, c["task"], c["context"])
    vocab, patch, _, n_out = model_shape(c, data)
    whiten = dict(whiten=True) if c["whiten"] else {}
    replicas = HierarchicalCNN.replicas(len(cs), [config["seed_model"] for config in cs], v=vocab, width=c["width"],
                                        s=patch, L=c["L"], n_classes=n_out, norm=c["norm"], bias=c["bias"],
                                        activation=c["activation"], **whiten).to(device)
    arguments = [sgd_arguments(config) for config in cs]
    shared = {key: value for key, value in arguments[0].items()
              if key not in ("max_epochs", "eval_every", "seed_data", "seed_order")}
    # every run's own evaluation epochs: None (max_epochs // 5 of each), an explicit eval_every, or each run's
    # list of print checkpoints
    eval_every = (None if c["eval_every"] is None and c["print_freq"] is None else c["eval_every"]
                  if c["print_freq"] is None else [a["eval_every"] for a in arguments])
    return train_sgd_replicas(replicas, data, [config["P"] for config in cs],
                              seed_data=[a["seed_data"] for a in arguments],
                              seed_order=[a["seed_order"] for a in arguments],
                              max_epochs=[a["max_epochs"] for a in arguments], eval_every=eval_every,
                              online=c["online"], progress=progress, on_stop=on_stop, exact=exact, **shared)
