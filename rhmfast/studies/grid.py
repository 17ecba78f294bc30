"""Grids of runs: from command-line flags or a TOML file to the list of complete run configs.

Every run parameter of ``rhmfast.studies.runs.DEFAULTS`` is an axis that takes one value or several. Values are
written ``a,b,c`` (a list) or ``lo:hi:n`` (n points spaced evenly in log between lo and hi, the usual
grid of training-set sizes; rounded and deduplicated for integer parameters). Besides the run
parameters:

- ``P_scaled``: training-set sizes in units of n_c·m^L (instead of ``P``), so one grid spans settings;
- ``settings``: (m, L) pairs, instead of the product of the ``m`` and ``L`` axes;
- ``seeds``: replicate seeds; replicate k uses seed k for both ``seed_sample`` and ``seed_model`` unless
  those are given themselves.

``require = "assumption6"`` (a run parameter) replaces each setting's ``seed_rules`` by the first seed >= it
whose grammar satisfies Ren et al.'s Assumption 6, searched once per grammar over at most 1000 seeds.

A TOML file holds the same keys at its top level, shared by every grid, and optionally ``[[grid]]``
tables, each a grid of its own (its keys override the top level); the sweep is the union of the grids.
Flags given on the command line override the file's top level.

Refused before anything runs: a range of more than MAX_RANGE_POINTS points, a sweep of more than
MAX_GRID_CONFIGS configs, non-finite numbers, P_scaled values that are not > 0 or give less than one
sample, and every value complete_config refuses (the error names the key).
"""
from __future__ import annotations

import itertools
import math
import tomllib

from rhmfast.data.grammar import find_assumption_seed
from rhmfast.studies.runs import DEFAULTS, MODELS, check_feasible, complete_config, config_hash, data_of

# Parameters whose default is None still have a type.
TYPES = {key: type(value) for key, value in DEFAULTS.items() if value is not None}
TYPES.update(n_classes=int, P=int, max_epochs=int, ren_lam=float, P_scaled=float, seeds=int, require=str,
             model=str, width=int, activation=str, lr=float, d=int, level_size=int, scheduler=str, scheduler_time=int,
             eval_every=int, print_freq=int, context=int, zipf_exponent=float, depth=int, heads=int)
NONE_VALUES = {"scheduler": ("none", "None")}  # the word for None of a choice whose default is None
EXTRA_KEYS = ("P_scaled", "settings", "seeds")
GRAMMAR_KEYS = ("v", "m", "s", "L", "n_classes", "rules", "seed_rules", "production", "zipf_exponent", "zipf_levels",
                "sparsity")
DATA_MODEL_KEYS = GRAMMAR_KEYS + ("data", "gate", "wiring", "fan_in", "d", "level_size", "task", "context")
MAX_SEED_SEARCH = 1000  # rules seeds a require may try per grammar
MAX_RANGE_POINTS = 10_000  # points of one lo:hi:n range
MAX_GRID_CONFIGS = 1_000_000  # configs of one sweep (all its grids), counted before they are built


def _scalar(key: str, text: str):
    kind = TYPES[key]
    text = text.strip()
    if key == "ren_sigma" and text == "auto":
        return text
    if kind is bool:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"rhmfast: {key} takes true or false, got {text!r}")
    try:
        value = kind(text) if kind is not int else int(text)
    except ValueError:
        raise ValueError(f"rhmfast: {key} takes {kind.__name__} values, got {text!r}") from None
    return _finite(key, value)


def _finite(key: str, value):
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"rhmfast: {key} takes finite numbers, got {value!r}")
    return value


def _log_range(key: str, text: str) -> list:
    parts = text.split(":")
    try:
        lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
    except (ValueError, IndexError):
        raise ValueError(f"rhmfast: {key} range must be lo:hi:n, got {text!r}") from None
    if not (0 < lo <= hi < math.inf and n >= 1 and len(parts) == 3):
        raise ValueError(f"rhmfast: {key} range lo:hi:n needs 0 < lo <= hi < inf and n >= 1, got {text!r}")
    if n > MAX_RANGE_POINTS:
        raise ValueError(f"rhmfast: {key} range lo:hi:n takes at most n = {MAX_RANGE_POINTS:,} points, got {text!r}")
    points = [lo] if n == 1 else [math.exp(math.log(lo) + i * (math.log(hi) - math.log(lo)) / (n - 1))
                                  for i in range(n)]
    if TYPES[key] is int:
        return sorted(set(round(p) for p in points))
    return [float(f"{p:.12g}") for p in points]  # 4.0, not 3.999999999999999


def parse_values(key: str, value) -> list:
    """The list of values of one axis, from a flag's text, a TOML value or a Python value."""
    if key == "settings":
        return _settings(value)
    if key not in TYPES:
        raise ValueError(f"rhmfast: unknown grid parameter {key!r}; known: {sorted(TYPES) + ['settings']}")
    if isinstance(value, str) and TYPES[key] is not str:
        if ":" in value:
            return _log_range(key, value)
        return [_scalar(key, part) for part in value.split(",") if part.strip()]
    if isinstance(value, str):
        return [None if part.strip() in NONE_VALUES.get(key, ()) else part.strip()
                for part in value.split(",") if part.strip()]
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    checked = []
    for item in values:
        if item is None and key in NONE_VALUES:
            checked.append(None)
        elif isinstance(item, str) and TYPES[key] is not str:
            checked += parse_values(key, item)
        elif TYPES[key] is float and isinstance(item, int) and not isinstance(item, bool):
            checked.append(float(item))
        elif not isinstance(item, TYPES[key]) or (TYPES[key] is int and isinstance(item, bool)):
            raise ValueError(f"rhmfast: {key} takes {TYPES[key].__name__} values, got {item!r}")
        else:
            checked.append(_finite(key, item))
    return checked


def _settings(value) -> list[tuple[int, int]]:
    """(m, L) pairs from 'm,L m,L ...' or a list of pairs."""
    if isinstance(value, str):
        try:
            pairs = [tuple(int(x) for x in item.split(",")) for item in value.split()]
        except ValueError:
            pairs = []
    else:
        pairs = [tuple(p) for p in value] if isinstance(value, (list, tuple)) else []
    if not pairs or any(len(p) != 2 or not all(isinstance(x, int) for x in p) for p in pairs):
        raise ValueError(f"rhmfast: settings must be (m, L) pairs, written 'm,L m,L ...', got {value!r}")
    return pairs


def load_toml(path: str) -> tuple[dict, list[dict]]:
    """(top-level keys, [[grid]] tables) of a sweep file."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    grids = data.pop("grid", [])
    if not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        raise ValueError(f"rhmfast: {path}: 'grid' must be an array of tables ([[grid]])")
    return data, grids


def sweep_configs(flags: dict, path: str | None = None) -> list[dict]:
    """The configs of a sweep file (optional) and command-line flags; a flag overrides the file's value
    everywhere, inside its [[grid]] tables too."""
    common, grids = load_toml(path) if path else ({}, [])
    for grid in grids:
        for key in flags:
            grid.pop(key, None)
    return expand({**common, **flags}, grids)


def expand(common: dict, grids: list[dict] | None = None) -> list[dict]:
    """The complete configs of a sweep, in grid order, without duplicates. Refuses, before anything
    runs, an empty grid, unknown parameters or models, impossible grammars and training sets larger
    than the grammar allows; the error names the parameter and its allowed range."""
    configs, seen, grammars, searched, total, parsed = [], set(), {}, {}, 0, []
    for grid in (grids or [{}]):  # every grid's values checked and counted before any config is built
        axes = {key: parse_values(key, value) for key, value in {**common, **grid}.items()}
        for key, values in axes.items():
            if not values:
                raise ValueError(f"rhmfast: the grid has no values of {key}")
        for f in axes.get("P_scaled", []):
            if not f > 0:
                raise ValueError(f"rhmfast: P_scaled (training-set sizes in units of n_c m^L) must be > 0, got {f!r}")
        total += math.prod(len(values) for values in axes.values())
        if total > MAX_GRID_CONFIGS:
            sizes = " x ".join(f"{key}: {len(values):,}" for key, values in axes.items() if len(values) > 1)
            raise ValueError(f"rhmfast: the sweep has more than MAX_GRID_CONFIGS = {MAX_GRID_CONFIGS:,} configs "
                             f"({sizes}{' in this grid' if grids else ''}); split it or use fewer values")
        parsed.append(axes)
    for axes in parsed:
        if "P" in axes and "P_scaled" in axes:
            raise ValueError("rhmfast: give P or P_scaled, not both")
        if "P" not in axes and "P_scaled" not in axes:
            raise ValueError("rhmfast: the grid needs training-set sizes: P (samples) or P_scaled (units of n_c m^L)")
        for model in axes.get("model", []):
            if model not in MODELS:
                raise ValueError(f"rhmfast: model must be one of {MODELS}, got {model!r}")
        settings = axes.pop("settings", None)
        if settings is not None:
            if "m" in axes or "L" in axes:
                raise ValueError("rhmfast: give settings or the m and L axes, not both")
            axes["mL"] = settings
        seeds = axes.pop("seeds", None)
        scaled = axes.pop("P_scaled", None)
        if scaled is not None:
            axes["P"] = [None]
        keys = list(axes)
        for combo in itertools.product(*(axes[k] for k in keys)):
            base = dict(zip(keys, combo))
            if "mL" in base:
                base["m"], base["L"] = base.pop("mL")
            for seed in (seeds if seeds is not None else [None]):
                config = dict(base)
                if seed is not None:
                    config.setdefault("seed_sample", seed)
                    config.setdefault("seed_model", seed)
                for P in _sizes(config, scaled):
                    complete = _required_seed(complete_config({**config, "P": P}), searched)
                    key = config_hash(complete)
                    if key not in seen:
                        seen.add(key)
                        configs.append(complete)
    if not configs:
        raise ValueError("rhmfast: the grid is empty")
    for config in configs:
        gkey = repr(tuple(config[k] for k in DATA_MODEL_KEYS))  # repr: zipf_levels may be a list
        if gkey not in grammars:
            grammars[gkey] = data_of(config)
        check_feasible(config, grammars[gkey])
    return configs


def _required_seed(config: dict, searched: dict) -> dict:
    """The complete config with seed_rules moved to the first seed >= it whose grammar meets its require;
    searched caches the seed found per grammar."""
    if config["require"] is None:
        return config
    key = repr(tuple(config[k] for k in GRAMMAR_KEYS))
    if key not in searched:
        searched[key] = find_assumption_seed(config["v"], config["m"], config["s"], config["L"], config["n_classes"],
                                             rules=config["rules"], start=config["seed_rules"],
                                             max_seeds=MAX_SEED_SEARCH)
    if searched[key] is None:
        first = config["seed_rules"]
        raise ValueError(f"rhmfast: require = 'assumption6': no seed_rules in [{first}, {first + MAX_SEED_SEARCH}) "
                         f"gives a grammar v={config['v']} m={config['m']} s={config['s']} L={config['L']} "
                         f"rules={config['rules']!r} that satisfies Assumption 6; drop require or change the grammar")
    return {**config, "seed_rules": searched[key]}


def _sizes(config: dict, scaled: list[float] | None) -> list[int]:
    if scaled is None:
        return [config["P"]]
    c = {**DEFAULTS, **config}
    if c["data"] != "rhm":
        raise ValueError(f"rhmfast: P_scaled (units of n_c m^L) is for RHM grids; give P for data = {c['data']!r}")
    c = complete_config({**config, "P": 1})  # the grammar's keys checked before they make a size
    n_classes = c["n_classes"]
    base = n_classes * c["m"] ** c["L"]
    for f in scaled:
        if not math.isfinite(f * base):
            raise ValueError(f"rhmfast: P_scaled = {f!r} gives P = {f} x {base} samples: too many")
        if round(f * base) < 1:
            raise ValueError(f"rhmfast: P_scaled = {f!r} gives P = {f * base:.3g} samples (n_c m^L = {base} for "
                             f"n_c={n_classes} m={c['m']} L={c['L']}), less than 1; P_scaled must be >= "
                             f"{1 / base:.3g} here")
    return sorted(set(round(f * base) for f in scaled))
