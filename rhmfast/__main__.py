"""Command line of rhmfast: ``python -m rhmfast demo`` (what ``make demo`` runs: a sample-complexity
experiment, rhmfast.studies.demo), ``generate`` (a data set on disk, or generation throughput), ``sweep``,
``train``, ``plot``, ``collect``, ``assumption`` (Ren et al.'s Assumption 6 of a grammar) and ``info``."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time

import torch
from tqdm import tqdm

import rhmfast
from rhmfast.data.dataset import write_dataset
from rhmfast.studies import reference_cli


def generate(args) -> None:
    """Generate a large RHM data set: with --out, write it as a resumable sharded data set
    (rhmfast.data.dataset); without, only measure the throughput. Every flag, --out (a writable folder)
    and the disk's free space are checked before anything is written (exit status 2); a write that
    fails all the same (a full disk) exits with 1, its partial shard removed."""
    from rhmfast._files import check_writable_dir
    from rhmfast.data.dataset import NotEnoughSpace

    for name, value, low in (("n", args.n, 0), ("start", args.start, 0), ("shard", args.shard, 1),
                             ("seed_sample", args.seed_sample, 0), ("seed_rules", args.seed_rules, 0)):
        if value < low:
            raise _stop("generate", f"--{name} must be >= {low}, got {value}")
    if args.seed_sample >= 1 << 64:
        raise _stop("generate", f"--seed_sample must be < 2^64, got {args.seed_sample}")
    try:
        if args.out is not None:
            check_writable_dir(args.out, "--out")
        grammar = _grammar(args)
        grammar.sample(0, seed=args.seed_sample, start=args.start + args.n, mode=args.mode)  # checks the stream
    except (ValueError, TypeError) as error:
        raise _stop("generate", error) from None
    print(f"{grammar}: input length {grammar.input_dim}, pmax = {grammar.pmax:.3e}")
    print("backends:", json.dumps(rhmfast.backends()))
    start = time.perf_counter()
    if args.out is None:
        with tqdm(total=args.n, unit="sample", unit_scale=True, desc="generating") as bar:
            for first in range(0, args.n, args.shard):
                count = min(args.shard, args.n - first)
                grammar.sample(count, seed=args.seed_sample, start=args.start + first, mode=args.mode)
                bar.update(count)
        seconds = time.perf_counter() - start
        gb = args.n * grammar.input_dim / 1e9
        print(f"generated {args.n:,} samples ({gb:.2f} GB of tokens, not kept) in {seconds:.2f} s: "
              f"{args.n / seconds:,.0f} samples/s")
        return
    try:
        dataset = write_dataset(grammar, args.n, args.out, seed=args.seed_sample, start=args.start, mode=args.mode,
                                shard_size=args.shard)
    except NotEnoughSpace as error:
        raise _stop("generate", f"--n {args.n:,} needs {error.needed:,} bytes ({error.needed / 1e9:,.2f} GB) in "
                                f"{args.out}, but only {error.free:,} bytes ({error.free / 1e9:,.2f} GB) are free "
                                "there; lower --n or free some space") from None
    except (ValueError, TypeError) as error:
        raise _stop("generate", error) from None
    except OSError as error:  # a write failed all the same (a full disk): its partial file is removed
        raise _stop("generate", f"writing {args.out} failed: {error}; the complete shards are kept (no partial "
                                "one): free some space and run the same command again to finish",
                    EXIT_FAILED) from None
    except KeyboardInterrupt:
        raise _stop("generate", "interrupted; the shards written so far are kept, run the same command again to "
                                "finish", EXIT_INTERRUPTED) from None
    seconds = time.perf_counter() - start
    size = sum(os.path.getsize(os.path.join(args.out, name)) for pair in dataset.manifest["shards"] for name in pair)
    print(f"{args.out}: {len(dataset):,} samples in {dataset.n_shards} shards, {size / 1e9:.2f} GB "
          f"({seconds:.2f} s this run); read it with rhmfast.data.dataset.open_dataset({args.out!r})")
    if args.verify:
        bad = dataset.verify()
        if bad:
            raise _stop("generate", f"verify: shards {bad} differ from the stream; delete them and run again",
                        EXIT_FAILED)
        print(f"verify: all {dataset.n_shards} shards equal the stream, drawn again")


def _add_grammar_flags(parser) -> None:
    """The flags of one grammar: --v --m --s --L --n_classes --rules --seed_rules."""
    parser.add_argument("--v", "--num_features", type=int, default=32)
    parser.add_argument("--m", type=int, default=8)
    parser.add_argument("--s", type=int, default=2)
    parser.add_argument("--L", "--num_layers", type=int, default=6)
    parser.add_argument("--n_classes", type=int, default=None, help="default: v")
    parser.add_argument("--rules", default="pcsl", help="rule sampler: pcsl, pcsl-2023 or first-token-uniform")
    parser.add_argument("--seed_rules", type=int, default=0)


def _grammar(args):
    """The grammar of the flags of _add_grammar_flags."""
    return rhmfast.RHM(args.v, args.m, args.s, args.L, n_classes=args.n_classes, seed=args.seed_rules,
                       rules=args.rules)


def assumption(args) -> None:
    """Ren et al.'s Assumption 6 of one grammar, level by level; exit status 0 when it holds, 1 when not."""
    from rhmfast.data.grammar import find_assumption_seed

    for name, value, low in (("seed_rules", args.seed_rules, 0), ("max_seeds", args.max_seeds, 1)):
        if value < low:
            raise _stop("assumption", f"--{name} must be >= {low}, got {value}")
    try:
        if args.find:
            seed = find_assumption_seed(args.v, args.m, args.s, args.L, args.n_classes, rules=args.rules,
                                        start=args.seed_rules, max_seeds=args.max_seeds)
            if seed is None:
                raise _stop("assumption", f"no rules seed in [{args.seed_rules}, {args.seed_rules + args.max_seeds}) "
                                          "satisfies Assumption 6; raise --max_seeds or change --seed_rules",
                            EXIT_FAILED)
            args.seed_rules = seed
        grammar = _grammar(args)
    except ValueError as error:
        raise _stop("assumption", error) from None
    if args.find:  # on stderr under --json, so that stdout stays one JSON document
        print(f"the first rules seed that satisfies Assumption 6 is --seed_rules {grammar.seed}",
              file=sys.stderr if args.json else sys.stdout)
    levels = grammar.exact.assumption_check()
    if args.json:  # JSON has no infinity: null stands for it
        print(json.dumps([{k: (None if v == math.inf else v) for k, v in row.items()} for row in levels]))
    else:
        print(grammar)
        print(f"{'level':>5} {'rho':>10} {'K_rho':>10} {'collisions':>10} {'never_first':>11} {'kappa':>10}")
        for row in levels:
            print(f"{row['level']:>5} {row['rho']:>10.4g} {row['K_rho']:>10.4g} {row['collisions']:>10} "
                  f"{row['never_first']:>11} {row['kappa']:>10.4g}")
        print(grammar.exact.assumption_summary())
    if not grammar.exact.satisfies_assumption():
        raise SystemExit(1)


def demo(args) -> None:
    """The main job: a small sample-complexity experiment (rhmfast.studies.demo). Exit statuses:
    DEMO_EXITS."""
    import shlex

    from rhmfast.studies.demo import check_demo, run_demo
    from rhmfast.studies.store import StoreLockedError, StoreWriteError

    try:
        checked = check_demo(args)
    except ValueError as error:  # bad flags or --out: nothing is created
        raise _stop("demo", error) from None
    command = shlex.join(["rhmfast", *getattr(args, "argv", ["demo"])])
    store = os.path.join(args.out, "runs")
    try:
        run_demo(args, checked)
    except StoreLockedError as error:
        raise _stop("demo", f"{error}; let it finish, then run the same command again", EXIT_LOCKED) from None
    except KeyboardInterrupt as interrupt:  # the engine has stopped; every finished run is stored
        _print_stopped("demo interrupted", getattr(interrupt, "outcome", None), store)
        raise _stop("demo", f"interrupted; every finished run is stored in {store}. Resume with the same "
                            f"command:\n  {command}", EXIT_INTERRUPTED) from None
    except StoreWriteError as error:  # a record not written (a full disk): the engine has stopped, no report
        _print_stopped("demo stopped", error.outcome, store)
        raise _stop("demo", _write_failed(error, command), EXIT_FAILED) from None


def _eps(text: str):
    """The test-error threshold of P*: a number, or rand/10 for (1 - 1/n_c)/10."""
    return text if text == "rand/10" else float(text)


# Other spellings of run keys: the 2024 random-hierarchy-model library's (reference_cli.ALIASES), and --net
ALIASES = dict(model=["--net"])
for _key, _spellings in reference_cli.ALIASES.items():
    ALIASES.setdefault(_key, []).extend(_spellings)
HELP = dict(P="training-set sizes: a,b,c or lo:hi:n (n log-spaced points)",
            P_scaled="training-set sizes in units of n_c m^L: a,b,c or lo:hi:n",
            settings="(m, L) pairs 'm,L m,L ...' instead of the product of --m and --L",
            seeds="replicate seeds: replicate k uses seed k as seed_sample and seed_model",
            model="hcnn (deep CNN), hlcn (its untied-weights twin), fc/fcn (fully connected on one-hot), mla "
                  "(attention-only transformer), encoder (pre-LayerNorm transformer), ren (Ren et al. layerwise); on "
                  "label hierarchies residual, mlp",
            heads="transformers (mla, encoder): attention heads, dividing the embedding dimension width",
            depth="fc, fcn: hidden layers; mla, encoder: attention blocks (default L)",
            trainer="auto (sgd for hcnn and fc, ren for ren), sgd, layerwise, layerwise_hints",
            task="classify (the root label is the target) or last-token (the hidden last leaf is the target)",
            context="last-token: the input keeps the last CONTEXT leaves, the hidden one included (default: all)",
            require="assumption6: use the first rules seed >= seed_rules whose grammar satisfies Ren et al.'s "
                    "Assumption 6 (at most 1000 seeds tried; the run records the seed used)")


def _add_run_flags(parser) -> None:
    """One flag per run parameter (rhmfast.studies.runs.DEFAULTS) and grid key, each taking a value, a list a,b,c
    or a log range lo:hi:n; only the flags given reach the grid (argparse.SUPPRESS)."""
    from rhmfast.studies.grid import EXTRA_KEYS
    from rhmfast.studies.runs import DEFAULTS

    group = parser.add_argument_group("run parameters (each a value, a list a,b,c, or a range lo:hi:n; a "
                                      "true/false one alone means true, as --bias)")
    for key in list(DEFAULTS) + list(EXTRA_KEYS):
        default = f" (default {DEFAULTS[key]})" if DEFAULTS.get(key) is not None else ""
        bare = dict(nargs="?", const="true") if isinstance(DEFAULTS.get(key), bool) else {}
        group.add_argument(f"--{key}", *ALIASES.get(key, []), dest=key, default=argparse.SUPPRESS, metavar="VALUES",
                           help=HELP.get(key, "") + default, **bare)


def _pack(text: str) -> int:
    """--pack: an int >= 1 (argparse reports the error with the flag's name and exits 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1 (1: every run alone), got {text!r}")
    return value


def _add_pool_flags(parser) -> None:
    """--workers and --threads of the commands that run many trainings at once (demo, sweep)."""
    parser.add_argument("--workers", type=int, default=None, help="parallel runs (default: cores / threads)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (1 by default: the models are small, and runs in parallel "
                             "use the cores better)")
    parser.add_argument("--pack", type=_pack, default=None, metavar="K",
                        help="train up to K compatible runs (end-to-end SGD of the hCNN: same grammar, architecture "
                             "and optimiser settings; any seeds and P) as one replica-batched model; 1: every run "
                             "alone; default: about two packs per worker, at most 8 runs on a CPU, 64 on a GPU. "
                             "Records are the same either way")


def _grid_from_args(args) -> list[dict]:
    """The configs of the --config file and the flags; a bad grid ends the command with its reason (a
    SystemExit whose code is the message 'rhmfast <command>: ...'; the command picks its exit status).
    In the library's mode (reference_cli.library_mode) the keys neither the flags nor the file give get the
    2024 random-hierarchy-model library's defaults, and the configs its batch rule; its flags that are not
    run keys are checked against the configs."""
    from rhmfast.studies.grid import EXTRA_KEYS, load_toml, sweep_configs
    from rhmfast.studies.runs import DEFAULTS, check_runnable

    flags = {key: getattr(args, key) for key in list(DEFAULTS) + list(EXTRA_KEYS) if hasattr(args, key)}
    path = getattr(args, "config", None)
    library = reference_cli.library_mode(args)
    try:
        reference_cli.check_flags(args)
        if library:
            common, grids = load_toml(path) if path else ({}, [])
            file_keys = set(common).union(*(set(grid) for grid in grids))
            flags = reference_cli.library_defaults(flags, file_keys)
        configs = reference_cli.check_configs(sweep_configs(flags, path), args, library)
        check_runnable(configs)
        return configs
    except (ValueError, TypeError, OSError) as error:
        hint = ""
        if library and "end-to-end SGD" in str(error):
            hint = ("; a flag spelled as the 2024 library spells it (e.g. --train_size) gave the run the library's "
                    "defaults (order pcsl, print_freq, stop_check eval, eval_at_start): --defaults rhmfast turns "
                    "them off")
        raise SystemExit(f"rhmfast {args.command}: {str(error).removeprefix('rhmfast: ')}{hint}") from None


# Exit statuses of sweep, demo, collect and plot, listed in their --help (argparse's own usage errors are 2 too)
EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_INTERRUPTED = 1, 2, 75, 130  # 75: EX_TEMPFAIL, try again later
SWEEP_EXITS = """exit status:
  0    every run of the grid is stored
  1    some runs failed (see the FAILED lines), or a record could not be written (a full disk: the sweep
       stops, no partial record is left); the others are stored, the same command runs the missing ones
  2    bad flags, grid or --out: nothing was run
  75   another sweep (its process id is named) holds the store --out; --wait queues behind it
  130  interrupted (Ctrl-C): every finished run is stored, the same command resumes the rest"""
DEMO_EXITS = """exit status:
  0    every run of the grid is stored and the report written
  1    some runs failed (see the FAILED lines; the report covers the others), or a record could not be
       written (a full disk: the demo stops, no partial record is left); the same command runs the
       missing ones
  2    bad flags or --out: nothing was run
  75   another sweep or demo (its process id is named) holds the store OUT/runs; run again when it ends
  130  interrupted (Ctrl-C): every finished run is stored, the same command resumes the rest"""
READ_EXITS = """corrupt run records are skipped with a warning on stderr and never renamed (rhmfast sweep and
train move them aside and redo their runs); files not named like run records are never touched.

exit status:
  0    written{failed}
  2    bad flags, DIR missing or without valid run records, or --out not writable: nothing was written
  130  interrupted (Ctrl-C)"""
COLLECT_FAILED = """
  1    writing the table failed (a full disk: the message says so); no partial table is left, an
       earlier one is kept"""
TRAIN_EXITS = """--checkpoint_every N: a run killed or interrupted resumes from OUT/<hash>.ckpt when the same command
runs again; the checkpoint is removed once the record is stored.

exit status:
  0    the run is stored (or was already)
  1    the record could not be written (a full disk: the message says so)
  2    bad flags, device, threads or --out: nothing was created or trained
  130  interrupted (Ctrl-C): nothing stored"""
GENERATE_EXITS = """exit status:
  0    every shard is written (or --verify found them whole)
  1    a write failed (a full disk: complete shards are kept, no temporary is left, the manifest says the
       data set is incomplete; the same command writes the rest) or --verify found a bad shard
  2    bad flags or --out, or not enough free space for the data set: nothing was written
  130  interrupted (Ctrl-C): complete shards are kept, the same command writes the rest"""
PLOT_FAILED = """
  1    writing the report failed (a full disk: the message says so); its files may be incomplete"""


class _CommandExit(SystemExit):
    """Ends a command with a documented exit status; the message is already on stderr (str() is it)."""

    def __init__(self, message: str, status: int):
        super().__init__(status)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _stop(command: str, message, status: int = EXIT_USAGE) -> _CommandExit:
    """Print 'rhmfast <command>: <message>' on stderr; raise the returned exception to exit with status."""
    message = f"rhmfast {command}: {str(message).removeprefix('rhmfast: ')}"
    print(message, file=sys.stderr, flush=True)
    return _CommandExit(message, status)


def _warn_corrupt(command: str, corrupt: list, shown: int = 10) -> None:
    """One stderr line per corrupt record skipped (the first few, then a count)."""
    for name, why in corrupt[:shown]:
        print(f"rhmfast {command}: warning: corrupt record {name} skipped, not counted ({why}); rhmfast sweep "
              "moves it aside and redoes its run", file=sys.stderr)
    if len(corrupt) > shown:
        print(f"rhmfast {command}: warning: {len(corrupt) - shown} more corrupt records skipped", file=sys.stderr)


def _print_stopped(what: str, done: dict | None, out: str) -> None:
    """On stdout, the counts of a sweep that stopped early (run_sweep's outcome), if known."""
    if done:
        print(f"{what} after {done['seconds']:.0f} s: {done['ran']} runs done now, {done['stored_before']} stored "
              f"before, {len(done['failures'])} failed, {done['not_run']} not run; records in {out}", flush=True)


def _write_failed(error, command: str) -> str:
    """The message of a sweep (or demo) stopped by a StoreWriteError (which names the file and the store
    and says why in words): the records written before are kept, and how to resume."""
    import errno

    fix = "free some space" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
    return (f"{error}; stopped. The records written before are kept, no partial one is left: {fix} and run the "
            f"same command again to do the missing runs:\n  {command}")


def sweep(args) -> None:
    """Run a grid of trainings into a result store (resumable: stored runs are skipped). Exit statuses:
    SWEEP_EXITS."""
    import shlex

    from rhmfast._files import check_writable_dir
    from rhmfast.studies.store import StoreLockedError, StoreWriteError
    from rhmfast.studies.sweep import describe, run_sweep

    for name, value, low in (("workers", args.workers, 1), ("threads", args.threads, 1), ("retries", args.retries, 0),
                             ("gpus_per_run", args.gpus_per_run, 0)):
        if value is not None and value < low:
            raise _stop("sweep", f"--{name} must be >= {low}, got {value}")
    try:
        configs = _grid_from_args(args)
    except SystemExit as error:  # its message, with this command's status for bad input
        raise _stop("sweep", str(error.code).removeprefix("rhmfast sweep: ")) from None
    except KeyboardInterrupt:  # building a large grid (a rules-seed search) takes a while
        raise _stop("sweep", "interrupted while building the grid; nothing was run", EXIT_INTERRUPTED) from None
    print(describe(configs))
    if args.dry_run:
        return
    try:
        check_writable_dir(args.out, "--out")
    except ValueError as error:
        raise _stop("sweep", error) from None
    options = dict(workers=args.workers, threads=args.threads, retries=args.retries,
                   pack=1 if args.checkpoint_every > 0 else args.pack)  # checkpoints are unpacked runs' files
    if args.engine == "ray":
        options.update(address=args.address, gpus=args.gpus_per_run, device=args.device)
    elif args.device is not None:
        if args.device == "cuda" and not torch.cuda.is_available():  # Ray's GPUs may be on other machines
            raise _stop("sweep", "--device cuda, but torch sees no CUDA device")
        options.update(device=args.device)
    command = shlex.join(["rhmfast", *getattr(args, "argv", ["sweep"])])
    if args.checkpoint_every < 0:
        raise _stop("sweep", f"--checkpoint_every must be >= 0 (0: no checkpoints), got {args.checkpoint_every}")
    try:
        outcome = run_sweep(configs, args.out, engine=args.engine, wait=args.wait,
                            checkpoint_every=args.checkpoint_every, **options)
    except StoreLockedError as error:
        raise _stop("sweep", f"{error}; let it finish, or pass --wait to run after it", EXIT_LOCKED) from None
    except KeyboardInterrupt as interrupt:  # the engine has stopped; every finished run is stored
        _print_stopped("sweep interrupted", getattr(interrupt, "outcome", None), args.out)
        raise _stop("sweep", f"interrupted; every finished run is stored in {args.out}. Resume with the same "
                             f"command:\n  {command}", EXIT_INTERRUPTED) from None
    except StoreWriteError as error:  # a record not written (a full disk): the engine has stopped
        _print_stopped("sweep stopped", error.outcome, args.out)
        raise _stop("sweep", _write_failed(error, command), EXIT_FAILED) from None
    print(f"sweep finished in {outcome['seconds']:.0f} s: {outcome['ran']} runs done now, "
          f"{outcome['stored_before']} stored before, {len(outcome['failures'])} failed; records in {args.out}")
    if outcome["failures"]:
        raise _stop("sweep", f"{len(outcome['failures'])} runs failed (the FAILED lines above); the same command "
                             "runs them again", EXIT_FAILED)


def _check_train_device(device: str, nproc: int) -> str:
    """train's --device: cpu, or cuda / cuda:N on a torch that sees that GPU (and, for --nproc N > 1 on
    cuda, N GPUs: one per rank); ValueError naming --device otherwise."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "it sees no CUDA device"
            raise ValueError(f"--device {device}: {why}; use --device cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"--device {device}: torch sees {count} CUDA devices (cuda:0 .. cuda:{count - 1})")
        if nproc > count:
            raise ValueError(f"--device {device} with --nproc {nproc} needs one GPU per rank; torch sees {count}")
    return device


def train(args) -> None:
    """One run, stored like a sweep's. --nproc N > 1 restarts this command under torchrun: N ranks, each
    generating its own shard of the data, gradients all-reduced (end-to-end SGD only). The 2024
    random-hierarchy-model library's command line runs as it is (reference_cli), --outname writing its
    output file besides the record."""
    import torch

    from rhmfast._files import check_writable_dir
    from rhmfast.studies.distributed import init_from_env, launch_torchrun, shutdown, train_sgd_distributed
    from rhmfast.studies.runs import build_model, config_hash, data_of, run_config, sgd_arguments
    from rhmfast.studies.store import ResultStore, make_record
    from rhmfast.studies.sweep import summary

    for name, value in (("nproc", args.nproc), ("threads", args.threads)):
        if value < 1:
            raise _stop("train", f"--{name} must be >= 1, got {value}")
    if args.checkpoint_every < 0:
        raise _stop("train", f"--checkpoint_every must be >= 0 (0: no checkpoints), got {args.checkpoint_every}")
    try:
        configs = _grid_from_args(args)
    except SystemExit as error:  # its message, with the status of bad input
        raise _stop("train", str(error.code).removeprefix("rhmfast train: ")) from None
    if len(configs) != 1:
        raise _stop("train", f"runs one config, the flags give {len(configs)}; use rhmfast sweep for grids")
    (config,) = configs
    if args.nproc > 1 and config["trainer"] != "sgd":
        raise _stop("train", f"--nproc > 1 trains end to end with SGD only, not trainer {config['trainer']!r}")
    if args.checkpoint_every and (config["trainer"] != "sgd" or args.nproc > 1 or args.outname is not None):
        raise _stop("train", "--checkpoint_every checkpoints end-to-end SGD runs in one process without --outname; "
                             f"this run is trainer {config['trainer']!r}, --nproc {args.nproc}"
                             + (", with --outname" if args.outname is not None else ""))
    library = reference_cli.library_mode(args)
    if args.outname is not None and not config["eval_at_start"] and config["trainer"] == "sgd":
        from rhmfast.studies.runs import complete_config

        config = complete_config({**config, "eval_at_start": True})  # the output file's epoch-0 entry
    if args.device is None:  # the library's default is cuda
        args.device = "cuda" if library and torch.cuda.is_available() else "cpu"
    try:  # before the store is created: a refused command leaves nothing behind
        _check_train_device(args.device, args.nproc)
        check_writable_dir(args.out, "--out")
        _check_outname(args, config)
        if args.nproc > 1:
            _check_data_parallel(args, config)
    except ValueError as error:
        raise _stop("train", error) from None
    store = ResultStore(args.out)
    stored = store.read(config_hash(config), move_aside=True)  # a corrupt record is kept aside, its run redone
    if stored is not None and (args.outname is None or os.path.exists(args.outname)):
        print(f"already stored: {summary(stored)}\n{store.path_of(stored['hash'])}")
        return
    for name, why in store.corrupt:
        print(f"corrupt record {name} moved aside to {store.moved.get(name, '?')} ({why}); its run is redone")
    torch.set_num_threads(args.threads)
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:  # the launcher: torchrun runs this command N times
        raise SystemExit(launch_torchrun(args.argv, args.nproc))
    if "LOCAL_RANK" in os.environ:
        rank, world = init_from_env(args.device)
        device = f"cuda:{torch.cuda.current_device()}" if args.device.startswith("cuda") else args.device
        data = data_of(config)  # the task on the grammar
        model = build_model(config, data).to(device)
        record = train_sgd_distributed(model, data, config["P"], progress=rank == 0,
                                       **sgd_arguments(config))
        shutdown()
        execution = dict(engine="torchrun", world_size=world, threads=args.threads, device=args.device)
        if rank != 0:
            return
    elif args.outname is not None:
        try:
            record = _train_outname(args, config)
        except OSError as error:  # the output file could not be written (a full disk)
            raise _stop("train", f"cannot write --outname {args.outname}: {error}", EXIT_FAILED) from None
        execution = dict(engine="train", threads=args.threads, device=args.device, outname=args.outname)
    else:
        checkpoint = os.path.join(args.out, f"{config_hash(config)}.ckpt") if args.checkpoint_every else None
        if checkpoint is not None and os.path.exists(checkpoint):
            print(f"resuming from the checkpoint {checkpoint}")
        try:
            record = run_config(config, device=args.device, progress=True, checkpoint=checkpoint,
                                checkpoint_every=args.checkpoint_every)
        except ValueError as error:  # a checkpoint of another run, or an unreadable one
            raise _stop("train", f"{error}; delete it to start the run afresh") from None
        execution = dict(engine="train", threads=args.threads, device=args.device)
    if record.interrupted and args.checkpoint_every:
        raise _stop("train", f"interrupted; the checkpoint in {args.out} holds the last saved epoch: the same command "
                             "resumes from it", EXIT_INTERRUPTED)
    if record.interrupted:
        raise _stop("train", "interrupted; nothing stored" + (f" (--outname {args.outname} holds the last save "
                                                              "checkpoint, if any)" if args.outname else ""),
                    EXIT_INTERRUPTED)
    stored = make_record(config, record, execution=execution)
    try:
        path = store.write(stored)
    except OSError as error:  # a full disk: StoreWriteError says so; no partial record is left
        raise _stop("train", f"{error}; the run is not stored (no partial record is left)", EXIT_FAILED) from None
    if args.checkpoint_every and "LOCAL_RANK" not in os.environ:  # the record is stored: its checkpoint is spent
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(args.out, f"{config_hash(config)}.ckpt"))
    print(f"{summary(stored)}\n{path}")


def _check_outname(args, config: dict) -> None:
    """--outname and --save_freq: a run the library's output file can describe, a file that can be written."""
    from rhmfast._files import check_writable_dir

    if args.outname is None:
        if args.save_freq is not None:
            raise ValueError("--save_freq sets when --outname is written; give --outname too")
        return
    if config["model"] not in ("hcnn", "fcn") or config["trainer"] != "sgd" or config["online"]:
        raise ValueError(f"--outname writes the 2024 library's output file, for its models (hcnn, fcn) trained end to "
                         f"end on a fixed training set; got model {config['model']!r}, trainer {config['trainer']!r}"
                         f"{', online' if config['online'] else ''}")
    if args.nproc > 1:
        raise ValueError("--outname is written by one process; leave out --nproc")
    if os.path.isdir(args.outname):
        raise ValueError(f"--outname {args.outname} is a folder; give the output file's name")
    check_writable_dir(os.path.dirname(os.path.abspath(args.outname)), "--outname (its folder)")


def _check_data_parallel(args, config: dict) -> None:
    """What train_sgd_distributed does not do: the library's data order and replacement, accumulation, the
    epoch-0 evaluation."""
    given = [key for key, default in (("order", "rhmfast"), ("replacement", False), ("accumulation", False),
                                      ("eval_at_start", False)) if config[key] != default]
    if given:
        raise ValueError(f"--nproc > 1 does not support {', '.join(f'{k}={config[k]!r}' for k in given)} (the 2024 "
                         "library's recipe); train in one process, or pass --defaults rhmfast and leave them out")


def _train_outname(args, config: dict):
    """train_sgd with the OutnameWriter callback: the record, and the library's output file --outname."""
    from tqdm.auto import tqdm

    from rhmfast.studies.runs import build_model, data_of, print_checkpoints, sgd_arguments, sgd_epochs
    from rhmfast.train import train_sgd

    grammar = data_of(config)  # the task on the grammar
    model = build_model(config, grammar).to(args.device)
    arguments = sgd_arguments(config)  # eval_at_start: the library's epoch-0 entry
    if config["print_freq"] is None:  # evaluations every eval_every epochs stand for its print checkpoints
        print_epochs = arguments["eval_every"]
        print_epochs = (list(range(print_epochs, sgd_epochs(config) + 1, print_epochs))
                        if isinstance(print_epochs, int) else print_epochs)
    else:
        print_epochs = print_checkpoints(config["print_freq"], sgd_epochs(config))
    save_freq = 10 if args.save_freq is None else args.save_freq
    save_epochs = print_checkpoints(save_freq, sgd_epochs(config), fill=False)
    library_args = reference_cli.library_args(config, lr_scale=float(model.lr_scale), device=args.device,
                                              outname=args.outname, save_freq=save_freq,
                                              filter_size=args.filter_size)
    writer = reference_cli.OutnameWriter(args.outname, library_args, model, print_epochs, save_epochs,
                                         echo=tqdm.write)
    os.makedirs(os.path.dirname(os.path.abspath(args.outname)), exist_ok=True)
    record = train_sgd(model, grammar, config["P"], progress=True, callback=writer, **arguments)
    writer.finish(record)
    return record


def plot(args) -> None:
    """The analysis of a store (or of a collected Parquet table): P* tables, scaling fit, plots. Reads
    the store only (corrupt records are skipped, not renamed). Exit statuses: READ_EXITS."""
    from rhmfast._files import check_writable_dir, write_error_text
    from rhmfast.studies.report import write_report
    from rhmfast.studies.store import load_rows

    if not os.path.exists(args.dir):
        raise _stop("plot", f"DIR {args.dir} does not exist; give a result store (the --out of rhmfast sweep) "
                            "or a Parquet table of rhmfast collect")
    out = args.out or os.path.join(args.dir if os.path.isdir(args.dir) else os.path.dirname(args.dir), "report")
    corrupt = []
    try:
        check_writable_dir(out, "--out" if args.out else "--out (default DIR/report)")
        rows = load_rows(args.dir, corrupt=corrupt)
        _warn_corrupt("plot", corrupt)
        paths = write_report(rows, out, eps=args.eps)
        with open(paths["pstar.md"]) as f:
            table = f.read()
    except ValueError as error:
        raise _stop("plot", error) from None
    except OSError as error:  # a full disk or a vanished folder while writing: the report is incomplete
        raise _stop("plot", f"cannot write the report in {out}: {write_error_text(error)}; the files written "
                            "there may be incomplete: free some space and run the same command again",
                    EXIT_FAILED) from None
    except KeyboardInterrupt:
        raise _stop("plot", "interrupted", EXIT_INTERRUPTED) from None
    print(table)
    print("wrote " + ", ".join(sorted(paths.values())))


def collect(args) -> None:
    """Compact a store's valid records into one Parquet table. Reads the store only (corrupt records are
    skipped, not renamed). Exit statuses: READ_EXITS."""
    from rhmfast._files import check_writable_dir
    from rhmfast.studies.store import StoreWriteError
    from rhmfast.studies.store import collect as collect_store

    if not os.path.isdir(args.dir):
        what = "is not a folder" if os.path.exists(args.dir) else "does not exist"
        raise _stop("collect", f"DIR {args.dir} {what}; give a result store (the --out of rhmfast sweep)")
    out = args.out or os.path.join(args.dir, "results.parquet")
    try:
        if os.path.isdir(out):
            raise ValueError(f"--out {out} is a folder; give the table's file name, e.g. "
                             f"{os.path.join(out, 'results.parquet')}")
        check_writable_dir(os.path.dirname(os.path.abspath(out)),
                           "--out (its folder)" if args.out else "DIR (where results.parquet goes without --out)")
        path, rows, corrupt = collect_store(args.dir, out)
    except StoreWriteError as error:  # a full disk: no partial table is left, an earlier one is kept
        raise _stop("collect", f"{error}; nothing written (no partial table is left)", EXIT_FAILED) from None
    except (ValueError, OSError) as error:
        raise _stop("collect", error) from None
    except KeyboardInterrupt:
        raise _stop("collect", "interrupted; nothing written", EXIT_INTERRUPTED) from None
    _warn_corrupt("collect", corrupt)
    print(f"wrote {rows} runs to {path}" + (f" ({len(corrupt)} corrupt records skipped)" if corrupt else ""))


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.run(args)


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per command, each with its flags."""
    parser = argparse.ArgumentParser(prog="rhmfast", description="Fast, exact Random Hierarchy Model tools")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="print the available backends")
    info.set_defaults(run=lambda args: print(json.dumps(rhmfast.backends(), indent=1)))
    d = commands.add_parser("generate", help="write a large RHM data set as resumable .npy shards (--out), or "
                                             "only measure generation throughput",
                            epilog=GENERATE_EXITS, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_grammar_flags(d)
    d.add_argument("--n", type=int, default=1 << 23, help="number of samples")
    d.add_argument("--start", type=int, default=0, help="index of the first sample in the stream")
    d.add_argument("--mode", choices=("iid", "index"), default="iid",
                   help="iid: independent samples; index: distinct samples (without replacement)")
    d.add_argument("--shard", type=int, default=1 << 20, help="samples per shard (and per sampling call)")
    d.add_argument("--seed_sample", type=int, default=0, help="the stream's seed (as write_dataset's seed)")
    d.add_argument("--out", default=None, help="data set folder (re-run the same command to resume)")
    d.add_argument("--verify", action="store_true", help="after writing, draw every shard again and compare")
    d.set_defaults(run=generate)
    a = commands.add_parser(
        "assumption", help="check Ren et al.'s Assumption 6 of a grammar exactly, level by level",
        description="Print, per level l, rho (the smallest distance between the label posteriors of two "
                    "non-synonym patches that can stand first), K_rho = rho m^(l/2), collisions (such pairs at "
                    "distance < 1e-12), never_first (patches that never stand first) and kappa, then a summary "
                    "line. Exit status: 0 when Assumption 6 holds, 1 when it does not (or --find finds no seed), 2 "
                    "for bad flags.")
    _add_grammar_flags(a)
    a.add_argument("--json", action="store_true", help="print the levels as a JSON list; null stands for infinity")
    a.add_argument("--find", action="store_true",
                   help="check the first rules seed >= --seed_rules that satisfies the assumption, and say which")
    a.add_argument("--max_seeds", type=int, default=1000, help="how many rules seeds --find tries")
    a.set_defaults(run=assumption)
    e = commands.add_parser("demo", help="a small sample-complexity experiment: P* of the hCNN, the Ren layerwise "
                                         "learner and a fully-connected baseline",
                            description="Run the demo's grid into the result store OUT/runs (re-running resumes "
                                        "it) and write its report (P* tables, curves, plots) into OUT.",
                            epilog=DEMO_EXITS, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--v", type=int, default=8, help="vocabulary size = number of classes")
    e.add_argument("--s", type=int, default=2)
    e.add_argument("--settings", default="2,4 3,3 4,3", help="(m, L) pairs 'm,L m,L ...'")
    e.add_argument("--grid", default="0.5,1,1.5,2,3,4,6",
                   help="training-set sizes of the SGD learners, in units of n_c m^L: a,b,c or lo:hi:n")
    e.add_argument("--ren_grid", default="2,4,8,16,32,64",
                   help="total samples of the Ren learner (all stages), in units of n_c m^L: a,b,c or lo:hi:n")
    e.add_argument("--seeds", default="0,1,2", help=HELP["seeds"])
    e.add_argument("--width", type=int, default=64, help="hCNN width (mean-field, lr 0.1 x width)")
    e.add_argument("--fc_width", type=int, default=256, help="width of the fully-connected baseline's hidden layer")
    e.add_argument("--max_steps", type=int, default=3000,
                   help="SGD budget in steps of batch 128 (training stops earlier at train loss 1e-3)")
    e.add_argument("--ren_features", type=int, default=512, help="random Fourier features per level (x2)")
    e.add_argument("--ren_sigma", type=float, default=0.28,
                   help="RBF bandwidth above the input level times sqrt(m) (distances between label "
                        "posteriors shrink like m^(-1/2) per level); the input level is the exact tensor product")
    e.add_argument("--n_test", type=int, default=2048)
    e.add_argument("--eps", type=_eps, default=0.1, help=_eps.__doc__)
    e.add_argument("--seed_rules", type=int, default=1)
    _add_pool_flags(e)
    e.add_argument("--out", default="out/demo", help="the report; the run records go to OUT/runs")
    e.set_defaults(run=demo)
    sw = commands.add_parser("sweep", help="run a grid of trainings, resumably, on a local pool or Ray",
                             description="Run a grid of trainings into a result store. Re-running resumes it.",
                             epilog=SWEEP_EXITS, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_flags(sw)
    sw.add_argument("--config", help="a TOML file of grid keys (top level shared, [[grid]] tables united)")
    sw.add_argument("--out", default="out/sweep", help="the result store (one JSON record per run)")
    sw.add_argument("--engine", choices=("local", "ray"), default="local")
    _add_pool_flags(sw)
    sw.add_argument("--retries", type=int, default=2, help="retries of a run whose worker dies")
    sw.add_argument("--address", default=None, help="Ray: join this cluster ('auto' or host:port)")
    sw.add_argument("--gpus_per_run", type=float, default=0.0, help="Ray: GPUs per run (fractions share a GPU)")
    sw.add_argument("--device", choices=("cpu", "cuda"), default=None,
                    help="where runs train (default: cpu; with Ray and --gpus_per_run > 0, cuda). Local engine: "
                         "every worker uses the current GPU")
    sw.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                    help="print the grid and its size, run nothing")
    sw.add_argument("--wait", action="store_true",
                    help="if another sweep holds the store --out, wait for it to finish instead of exiting (75)")
    sw.add_argument("--checkpoint_every", type=int, default=0, metavar="N",
                    help="end-to-end SGD runs save their state every N epochs to OUT/<hash>.ckpt, so a run whose "
                         "sweep or worker is killed resumes where it was (for runs longer than a few minutes)")
    reference_cli.add_flags(sw, outputs=False)
    sw.set_defaults(run=sweep)
    tr = commands.add_parser("train", help="one training run (--nproc N: data-parallel under torchrun)",
                             description="One run, given by the same flags as a sweep, stored in --out.",
                             epilog=TRAIN_EXITS, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_flags(tr)
    tr.add_argument("--config", help="a TOML file of run parameters")
    tr.add_argument("--out", default="out/train", help="the result store the record goes to")
    tr.add_argument("--nproc", type=int, default=1, help="data-parallel processes (torchrun; gloo on CPU, NCCL on GPU)")
    tr.add_argument("--threads", type=int, default=1, help="torch threads per process")
    tr.add_argument("--checkpoint_every", type=int, default=0, metavar="N",
                    help="save the run's state every N epochs to OUT/<hash>.ckpt (end-to-end SGD, one process); "
                         "the same command after a kill resumes from it, to the bits of an uninterrupted run")
    tr.add_argument("--device", default=None, help="cpu or cuda (end-to-end SGD; each rank its own GPU); default cpu, "
                                                   "in the library's mode (--defaults) cuda when there is one")
    reference_cli.add_flags(tr, outputs=True)
    tr.set_defaults(run=train)
    pl = commands.add_parser("plot", help="P* with bootstrap intervals, the scaling fit and plots of a store",
                             epilog=READ_EXITS.format(failed=PLOT_FAILED), formatter_class=argparse.RawDescriptionHelpFormatter)
    pl.add_argument("dir", help="a result store, or a Parquet table written by rhmfast collect")
    pl.add_argument("--eps", type=_eps, default=0.1, help=_eps.__doc__)
    pl.add_argument("--out", default=None, help="default: DIR/report")
    pl.set_defaults(run=plot)
    co = commands.add_parser("collect", help="compact a result store into one Parquet table",
                             epilog=READ_EXITS.format(failed=COLLECT_FAILED),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    co.add_argument("dir")
    co.add_argument("--out", default=None, help="default: DIR/results.parquet")
    co.set_defaults(run=collect)
    return parser


if __name__ == "__main__":
    main()
