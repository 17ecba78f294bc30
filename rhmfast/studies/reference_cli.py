"""The 2024 pcsl-epfl random-hierarchy-model library's command line (its main.py) in ``rhmfast train`` and
``rhmfast sweep``, and its output file (``--outname``).

- ``FLAGS``: every flag of its main.py, what rhmfast does with it, its default there.
- ``library_mode``: a command line that spells a flag as only the library does (``--train_size``,
  ``--num_synonyms``, ``--outname``, ...) or names a model as only it does (``transformer_mla``) gets the
  library's defaults (``library_defaults``, which also renames its models as rhmfast's): its data order,
  100 epochs, evaluations and the loss-threshold check at its print checkpoints, its epoch-0 point.
- ``check_flags`` / ``check_configs``: the flags that have no rhmfast key are checked against the run (the
  library's own asserts, and what rhmfast does not have) and given to it: ``--mode masked`` is the task
  "last-token" with ``--num_tokens`` its context, ``--num_heads`` and ``--embedding_dim`` the transformers'
  heads and width.
- ``OutnameWriter``: a ``train_sgd`` callback that keeps the library's ``dynamics`` and ``best`` and writes
  its pickle (``pickle.dump(args)`` then ``pickle.dump(output)``) at its save checkpoints and at the stop.

Facts about the library are from its main.py, init.py, training.py and measures.py (HEAD of
github.com/pcsl-epfl/random-hierarchy-model), and about the NeurIPS 2024 code (whose main.py has the same
flags and adds ``--model transformer_bert``) from github.com/fracagnetta/theory-language-modelling; the code
here is rhmfast's own.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import time

# (flag of the library's main.py, rhmfast's flag or what it does, the library's default)
FLAGS = [
    ("--device", "--device (train)", "cuda"),
    ("--dataset", "checked: rhm, the only data set the library has", None),
    ("--mode", "masked: --task last-token (the hidden last token is the target); leave it out for the root label",
     None),
    ("--num_features", "--v", None),
    ("--num_classes", "--n_classes", None),
    ("--num_synonyms", "--m", None),
    ("--tuple_size", "--s", None),
    ("--num_layers", "--L", None),
    ("--seed_rules", "--seed_rules", None),
    ("--num_tokens", "with --mode masked: --context (the window ending at the hidden token); else checked = s^L", None),
    ("--train_size", "--P", None),
    ("--batch_size", "--batch_size (clipped to P; must divide P, as there)", None),
    ("--test_size", "--n_test", None),
    ("--seed_sample", "--seed_sample", None),
    ("--replacement", "--replacement", False),
    ("--input_format", "checked: onehot; long too for the transformers (rhmfast's models read token ids)", "onehot"),
    ("--whitening", "--whiten", 0),
    ("--model", "--model: hcnn, hlcn, fcn; transformer_mla: mla (the NeurIPS code's transformer_bert: encoder)", None),
    ("--depth", "--depth (fcn; the transformers' layers, default L); checked = log_s(num_tokens) for hcnn and hlcn",
     None),
    ("--width", "--width (for the transformers, where --embedding_dim is not given)", None),
    ("--filter_size", "checked: must be s for hcnn and hlcn", None),
    ("--num_heads", "--heads (the transformers)", None),
    ("--embedding_dim", "--width (the transformers' embedding dimension)", None),
    ("--bias", "--bias", False),
    ("--seed_model", "--seed_model", None),
    ("--lr", "--lr (times the width for hcnn, hlcn and fcn, as there)", 0.1),
    ("--optim", "--optimizer", "sgd"),
    ("--accumulation", "--accumulation", False),
    ("--momentum", "--momentum", 0.9),
    ("--scheduler", "--scheduler", None),
    ("--scheduler_time", "--scheduler_time", None),
    ("--max_epochs", "--max_epochs", 100),
    ("--print_freq", "--print_freq", 10),
    ("--save_freq", "--save_freq (train, with --outname)", 10),
    ("--loss_threshold", "--loss_threshold", 1e-3),
    ("--outname", "--outname (train): the library's pickle", None),
]

# Spellings of run keys that are the library's, not rhmfast's (rhmfast.__main__.ALIASES adds them)
ALIASES = dict(v=["--num_features"], n_classes=["--num_classes"], m=["--num_synonyms"], s=["--tuple_size"],
               L=["--num_layers"], P=["--train_size"], n_test=["--test_size"], optimizer=["--optim"],
               whiten=["--whitening"])
# Flags of the library's that are not run keys: checked against the run (check_flags, check_configs)
CHECKED = ("dataset", "mode", "num_tokens", "input_format", "filter_size", "num_heads", "embedding_dim")
OUTPUTS = ("outname", "save_freq")  # train only
TRIGGERS = {spelling for spellings in ALIASES.values() for spelling in spellings} | {
    f"--{name}" for name in CHECKED + OUTPUTS}
MODES = ("auto", "rhmfast", "pcsl")
# The library's defaults where they differ from rhmfast's (and the keys that make them its recipe)
LIBRARY_DEFAULTS = dict(order="pcsl", max_epochs=100, print_freq=10, stop_check="eval", eval_at_start=True)
# The library's model names that rhmfast spells otherwise (transformer_bert: the NeurIPS 2024 code's)
MODEL_NAMES = {"transformer_mla": "mla", "transformer_bert": "encoder"}
# The library's transformer flags and the run keys they give
TRANSFORMER_FLAGS = {"num_heads": "heads", "embedding_dim": "width"}
INPUT_FORMATS = ("onehot", "long")  # long: token ids, the transformers' only


def add_flags(parser, outputs: bool) -> None:
    """The library's flags that are not run keys: --dataset ... --embedding_dim, and with outputs (train)
    --outname and --save_freq; plus --defaults."""
    group = parser.add_argument_group("the 2024 random-hierarchy-model library's flags that are not run keys")
    group.add_argument("--defaults", choices=MODES, default="auto",
                       help="whose defaults the run gets: pcsl (the library's: its data order, 100 epochs, the "
                            "loss threshold checked and the test set evaluated at its print checkpoints), rhmfast, "
                            "or auto: pcsl when a flag is spelled as only the library spells it (--train_size, "
                            "--num_synonyms, --outname, ...) or --model names a model as only it does "
                            "(transformer_mla, transformer_bert)")
    group.add_argument("--dataset", default=None, help="rhm (checked)")
    group.add_argument("--mode", default=None,
                       help="masked: the last token, hidden, is the target (--task last-token); leave it out to "
                            "train on the root label")
    group.add_argument("--num_tokens", type=int, default=None,
                       help="with --mode masked: the length of the window that ends at the hidden token (--context; "
                            "the library crops its input to it, rhmfast keeps all s^L positions and masks those "
                            "before it: the same information); otherwise checked: must be s^L")
    group.add_argument("--input_format", default=None,
                       help="onehot (checked); long too for the transformers (rhmfast's models read token ids)")
    group.add_argument("--filter_size", type=int, default=None, help="checked: must be s for the hcnn and hlcn")
    group.add_argument("--num_heads", type=int, default=None,
                       help="the transformers' attention heads (--heads; default 4)")
    group.add_argument("--embedding_dim", type=int, default=None,
                       help="the transformers' embedding dimension (--width for them, which it replaces as there; "
                            "default 128)")
    if outputs:
        group.add_argument("--outname", default=None,
                           help="write the library's output file: pickle.dump(args), then pickle.dump(output) with "
                                "output = {init, best, model, dynamics, epoch}, weights under its key names; "
                                "rewritten (atomically) at its save checkpoints and at the stop")
        group.add_argument("--save_freq", type=int, default=None,
                           help="the save checkpoints of --outname: every save_freq epochs (default 10), where "
                                "they meet a print checkpoint, as in the library")


def spellings(argv) -> set[str]:
    """The flags of a command line as written (--key=value counts as --key)."""
    return {token.split("=", 1)[0] for token in argv if token.startswith("--")}


def library_mode(args) -> bool:
    """Whether the run gets the library's defaults: --defaults pcsl, or auto and a flag spelled as only the
    library spells it or a model named as only it names it (MODEL_NAMES)."""
    defaults = getattr(args, "defaults", "auto")
    if defaults != "auto":
        return defaults == "pcsl"
    return bool(spellings(getattr(args, "argv", [])) & TRIGGERS) or bool(_library_models(args))


def library_defaults(flags: dict, file_keys: set[str]) -> dict:
    """flags with the library's model names as rhmfast's (MODEL_NAMES) and the library's defaults added for
    the keys neither they nor the --config file give (max_epochs only without max_steps, print_freq only
    without eval_every)."""
    given = set(flags) | file_keys
    out = dict(flags)
    if isinstance(out.get("model"), str):
        out["model"] = ",".join(MODEL_NAMES.get(name, name) for name in _model_names(out["model"]))
    for key, value in LIBRARY_DEFAULTS.items():
        if key in given or (key == "max_epochs" and "max_steps" in given) or (key == "print_freq" and
                                                                             "eval_every" in given):
            continue
        out[key] = value
    return out


def check_flags(args) -> None:
    """The library's flags that rhmfast refuses or has no key for, checked before the grid is built
    (ValueError naming the flag and what to use)."""
    library = library_mode(args)
    args = _Flags(args)
    if args.dataset is not None and args.dataset != "rhm":
        raise ValueError(f"--dataset must be rhm (the random hierarchy model, the library's only data set), got "
                         f"{args.dataset!r}")
    if args.mode is not None and args.mode != "masked":
        raise ValueError(f"--mode: the library knows only 'masked' (the last token, hidden, is the target), got "
                         f"{args.mode!r}; leave it out to train on the root label")
    if args.mode == "masked":
        _check_masked_flags(args)
    if args.input_format is not None and args.input_format not in INPUT_FORMATS:
        raise ValueError(f"--input_format {args.input_format}: not one rhmfast has. rhmfast's models read token ids "
                         "and compute what the library's do on one-hot inputs: use --input_format onehot (or leave "
                         "it out; long is accepted for the transformers)")
    for name in ("num_tokens", "filter_size", "num_heads", "embedding_dim", "save_freq"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    for name in _library_models(args):
        if name not in MODEL_NAMES:
            raise ValueError(f"--model {name}: the library's transformer is transformer_mla (rhmfast's mla), the "
                             "NeurIPS 2024 code's also transformer_bert (rhmfast's encoder)")
        if not library:  # the flags are read before --defaults rhmfast could rename it
            raise ValueError(f"--model {name} is the 2024 library's name of rhmfast's {MODEL_NAMES[name]}: with "
                             f"--defaults rhmfast write --model {MODEL_NAMES[name]}")


def check_configs(configs: list[dict], args, library: bool) -> list[dict]:
    """The complete configs given the library's flags that are not run keys (``--mode masked`` and
    ``--num_tokens``: task "last-token" and its context; ``--num_heads``, ``--embedding_dim``: the
    transformers' heads and width) and checked against them (--num_tokens, --input_format, --filter_size,
    and in library mode --depth for the hcnn and hlcn), and in library mode its batch rule: a batch size
    >= P becomes P, and it must divide P. Returns the configs (deduplicated)."""
    from rhmfast.studies.runs import TRANSFORMERS, complete_config, config_hash

    args = _Flags(args)
    out, seen = [], set()
    depths = _flag_values(args, "depth") if library else None
    checked = [name for name in ("mode", "num_tokens", "filter_size", "num_heads", "embedding_dim")
               if getattr(args, name) is not None]
    models = sorted({c["model"] for c in configs})
    for name in TRANSFORMER_FLAGS:
        if getattr(args, name) is not None and not set(models) & set(TRANSFORMERS):
            raise ValueError(f"--{name} is a transformer flag (--model transformer_mla, rhmfast's mla, or "
                             f"transformer_bert, its encoder); the run's model is {', '.join(models)}")
    if args.input_format == "long" and set(models) - set(TRANSFORMERS):
        raise ValueError(f"--input_format long (token ids) is accepted for the transformers only; the library's "
                         f"{', '.join(sorted(set(models) - set(TRANSFORMERS)))} reads one-hot inputs: use "
                         "--input_format onehot (or leave it out)")
    for c in configs:
        if c["data"] != "rhm":
            if library or checked:
                raise ValueError(f"the 2024 library's flags ({', '.join('--' + n for n in checked) or '--defaults'}) "
                                 f"describe an RHM, got data = {c['data']!r}")
            out.append(c)
            continue
        given = _given_keys(c, args)
        if given:
            c = complete_config({**c, **given})
        window = c["context"] if c["task"] == "last-token" else c["s"] ** c["L"]
        if args.num_tokens is not None and args.num_tokens != window:
            if c["task"] == "last-token":
                raise ValueError(f"--num_tokens {args.num_tokens}: the masked window is context = {window} tokens; "
                                 "they must be equal")
            raise ValueError(f"--num_tokens {args.num_tokens}: the root label is the target here, of all s^L = "
                             f"{window} tokens (s={c['s']}, L={c['L']}); the library's crop to the last num_tokens "
                             "is rhmfast's context of --mode masked only")
        if c["model"] in ("hcnn", "hlcn"):
            _check_tree_flags(c, args.filter_size, depths, window)
        if getattr(args, "outname", None) is not None and c["task"] == "last-token":
            raise ValueError("--outname with --mode masked: rhmfast's input keeps all s^L positions and has a mask "
                             "token of its own, so its weights are not the library's model's; leave --outname out "
                             "(the run's record goes to --out)")
        if library and c["trainer"] == "sgd" and not c["online"]:
            if c["batch_size"] >= c["P"]:
                c = complete_config({**c, "batch_size": c["P"]})
            elif c["P"] % c["batch_size"]:
                raise ValueError(f"--batch_size {c['batch_size']} must divide --train_size {c['P']} (the library's "
                                 "rule; --defaults rhmfast lets the last minibatch be smaller)")
        key = config_hash(c)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def _check_masked_flags(args) -> None:
    """--mode masked against rhmfast's own --task and --context, where they are given too."""
    tasks, contexts = _flag_values(args, "task"), _flag_values(args, "context")
    if tasks is not None and tasks != ["last-token"]:
        raise ValueError(f"--mode masked is the task last-token; --task {','.join(tasks)} says otherwise: give one")
    if contexts is None:
        return
    if tasks is None:
        raise ValueError("--context goes with --task last-token; with --mode masked give the window as --num_tokens")
    if args.num_tokens is not None and contexts != [args.num_tokens]:
        raise ValueError(f"--num_tokens {args.num_tokens} and --context {','.join(map(str, contexts))} both give "
                         "the masked window's length, differently: give one")


def _given_keys(c: dict, args) -> dict:
    """The run keys the library's flags give the RHM config c: task and context (--mode masked,
    --num_tokens), and for a transformer width and heads (--embedding_dim, --num_heads)."""
    from rhmfast.studies.runs import TRANSFORMERS

    given = {}
    if args.mode == "masked":
        given["task"] = "last-token"
        if args.num_tokens is not None:
            length = c["s"] ** c["L"]
            if args.num_tokens > length:
                raise ValueError(f"--num_tokens {args.num_tokens}: the window of --mode masked ends at the last of the "
                                 f"s^L = {length} tokens (s={c['s']}, L={c['L']}); give 1 <= num_tokens <= {length}")
            given["context"] = args.num_tokens
    if c["model"] in TRANSFORMERS:
        given.update({key: getattr(args, name) for name, key in TRANSFORMER_FLAGS.items()
                      if getattr(args, name) is not None})
        width, heads = given.get("width", c["width"]), given.get("heads", c["heads"])
        if width % heads:
            raise ValueError(f"--num_heads must divide --embedding_dim (the library asserts it), got {heads} heads "
                             f"and embedding dimension {width}")
    return given


def _check_tree_flags(c: dict, filter_size, depths, window: int) -> None:
    """--filter_size and --depth of the hcnn or hlcn config c as the library asserts them: the filters span
    one patch of s tokens, and its num_tokens (the window) == filter_size^depth."""
    model, s, L = c["model"], c["s"], c["L"]
    if filter_size is not None and filter_size != s:
        raise ValueError(f"--filter_size {filter_size}: the {model}'s filters span one patch of s = {s} tokens "
                         "(--tuple_size); they must be equal")
    if depths is None or [s**depth for depth in depths] == [window]:
        return
    given = ",".join(map(str, depths))
    levels = next((depth for depth in range(1, L + 1) if s**depth == window), None)
    if levels is None:
        raise ValueError(f"--depth {given}: the library's {model} needs num_tokens = filter_size^depth, and the "
                         f"window of {window} tokens is no power of s = {s}; leave --depth out (rhmfast's {model} "
                         "reads the masked window at any length)")
    kept = "" if levels == L else f"; rhmfast's keeps all L = {L} levels, the tokens before the window masked"
    raise ValueError(f"--depth {given}: the {model} has one layer per level of its {window} input tokens, depth = "
                     f"{levels} (the library asserts num_tokens == filter_size^depth){kept}")


class _Flags:
    """The parsed flags, None for the library's flags a parser does not have."""

    def __init__(self, args):
        self._args = args

    def __getattr__(self, name):
        return getattr(self._args, name, None)


def _flag_values(args, key: str):
    """The values of a run-key flag as given (parsed), or None if not given."""
    from rhmfast.studies.grid import parse_values

    value = getattr(args, key)
    return None if value is None else sorted(set(parse_values(key, value)))


def _model_names(text: str) -> list[str]:
    """The model names of a --model value (a,b,c)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _library_models(args) -> list[str]:
    """The --model values named as only the library names them (transformer_*)."""
    model = getattr(args, "model", None)
    return [name for name in _model_names(model) if name.startswith("transformer")] if isinstance(model, str) else []


# ---- the output file -----------------------------------------------------------------------------------

def library_args(config: dict, *, lr_scale: float, device: str, outname: str, save_freq: int,
                 filter_size: int | None = None) -> argparse.Namespace:
    """The argparse.Namespace the library pickles first: every flag of its main.py with this run's values,
    after main.py's and init.py's changes (batch_size clipped, scheduler_time = max_epochs when None, lr times
    the width for hcnn and fcn with hidden layers: here the model's lr_scale, input_size = s^L added last)."""
    from rhmfast.studies.runs import sgd_epochs

    c = config
    epochs = sgd_epochs(c)
    model = c["model"]
    values = dict(
        device=device, dataset="rhm", mode=None, num_features=c["v"], num_classes=c["n_classes"],
        num_synonyms=c["m"], tuple_size=c["s"], num_layers=c["L"], seed_rules=c["seed_rules"],
        num_tokens=c["s"] ** c["L"], train_size=c["P"], batch_size=c["batch_size"], test_size=c["n_test"],
        seed_sample=c["seed_sample"], replacement=bool(c["replacement"]), input_format="onehot",
        whitening=int(bool(c["whiten"])), model=model, depth=c["L"] if c["model"] == "hcnn" else c["depth"],
        width=c["width"], filter_size=c["s"] if c["model"] == "hcnn" else filter_size, num_heads=None,
        embedding_dim=None, bias=bool(c["bias"]), seed_model=c["seed_model"], lr=c["lr"] * lr_scale,
        optim=c["optimizer"], accumulation=bool(c["accumulation"]), momentum=c["momentum"],
        scheduler=c["scheduler"], scheduler_time=c["scheduler_time"] or epochs, max_epochs=epochs,
        print_freq=c["print_freq"], save_freq=save_freq, loss_threshold=c["loss_threshold"], outname=outname,
        input_size=c["s"] ** c["L"])
    return argparse.Namespace(**values)


def reference_state(model) -> dict:
    """The model's weights under the library's key names (to_reference_state_dict), as CPU tensors."""
    convert = getattr(model, "to_reference_state_dict", None)
    if convert is None:
        raise ValueError(f"rhmfast: --outname needs the library's key names, which {type(model).__name__} does not "
                         "give (to_reference_state_dict); use --model hcnn or fcn")
    return {key: value.detach().to("cpu", copy=True) for key, value in convert().items()}


class OutnameWriter:
    """A train_sgd callback (with eval_at_start=True and eval_every = the print checkpoints) that keeps the
    library's 'dynamics' and 'best' and writes its output file at its save checkpoints; ``finish(record)``
    writes it at the stop.

    As the library's main.py: dynamics starts with {'t': 0, 'trainloss', 'testloss', 'testacc'} of the untrained
    model and gains one entry per print checkpoint; best starts {'epoch': 0, 'model': None, 'loss', 'acc'} of
    the untrained model and takes the weights of each print checkpoint whose test loss is lower (strictly); a
    save checkpoint writes the file only where it meets a print checkpoint (the next save checkpoint is
    waited for in order, so one that misses a print checkpoint ends the saves before the stop, as there).
    At the stop the file is written again: after a stop by the loss threshold (at a print checkpoint with
    stop_check 'eval', the library's rule; with 'epoch', at that epoch, whose entry is added), and also after
    the last epoch when that is not a save checkpoint (the library writes nothing then; here the file always
    ends with the final weights, 'epoch' the last one trained).

    Each write is atomic: a temporary file in the same folder, flushed to disk, then renamed over ``path``."""

    def __init__(self, path: str, args: argparse.Namespace, model, print_epochs, save_epochs, *, echo=print):
        self.path, self.args, self.model, self.echo = os.fspath(path), args, model, echo
        self.print_epochs, self.save_epochs = set(print_epochs), list(save_epochs)
        self.init = reference_state(model)
        self.dynamics, self.best, self.saves, self.writes = [], None, 0, 0
        self.started = time.perf_counter()

    def _entry(self, point: dict) -> dict:
        return {"t": point["epoch"], "trainloss": float(point["train_loss"]), "testloss": float(point["test_loss"]),
                "testacc": float(point["test_accuracy"])}

    def __call__(self, point: dict) -> None:
        epoch = point["epoch"]
        if epoch == 0:
            self.started = time.perf_counter()
            self.dynamics = [self._entry(point)]
            self.best = {"epoch": 0, "model": None, "loss": float(point["test_loss"]),
                         "acc": float(point["test_accuracy"])}
            return
        if epoch not in self.print_epochs:
            return
        self._checkpoint(point)
        if self.saves < len(self.save_epochs) and epoch == self.save_epochs[self.saves]:
            self.echo(f"Checkpoint at epoch {epoch}, saving data ...")
            self.write(epoch)
            self.saves += 1

    def _checkpoint(self, point: dict) -> None:
        epoch = point["epoch"]
        entry = self._entry(point)
        if self.best is None:
            raise RuntimeError("rhmfast: OutnameWriter needs train_sgd's eval_at_start=True (the epoch-0 point)")
        if entry["testloss"] < self.best["loss"]:
            self.best = {"epoch": epoch, "model": reference_state(self.model), "loss": entry["testloss"],
                         "acc": entry["testacc"]}
        self.dynamics.append(entry)
        seconds = (time.perf_counter() - self.started) / epoch
        self.echo(f"Epoch :  {epoch} \t train loss: {entry['trainloss']:06.4f} ,test loss: {entry['testloss']:06.4f}"
                  f" , test acc.: {entry['testacc']:04.2f} , epoch time: {seconds:5f}")

    def finish(self, record) -> None:
        """The write at the stop (not after an interrupted run: the last save stays)."""
        if record.interrupted or not record.curve:
            return
        last = record.curve[-1]
        if record.stopped_by == "loss_threshold" and last["epoch"] not in self.print_epochs:
            self._checkpoint(last)  # stop_check "epoch": the library's stop is always an entry
        self.write(last["epoch"])

    def output(self, epoch: int) -> dict:
        return {"init": self.init, "best": self.best, "model": reference_state(self.model),
                "dynamics": self.dynamics, "epoch": epoch}

    def write(self, epoch: int) -> None:
        folder = os.path.dirname(os.path.abspath(self.path))
        tmp = os.path.join(folder, f".{os.path.basename(self.path)}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                pickle.dump(self.args, f)
                pickle.dump(self.output(epoch), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        self.writes += 1


def load_outname(path: str):
    """(args, output) of a file written by the library's main.py or by --outname (two pickles, as its
    notebooks read them)."""
    with open(path, "rb") as f:
        args = pickle.load(f)
        output = pickle.load(f)
    return args, output

