"""RHM data sets on disk: samples ``start .. start + n - 1`` of one stream, written in shards of ``.npy``
files that numpy can memory-map and any framework can read.

A data set folder holds::

    dataset.json         format "rhmfast.dataset", version 1: the stream (seed, mode, start, n), the
                         shard size, shapes and dtypes, and the file names
    grammar.json         the grammar (RHM.save)
    tokens-00000.npy     [k, s^L] tokens of shard 0 (uint8 when v <= 256), k = shard size but in the last
    labels-00000.npy     [k] int64 labels of shard 0
    ...

Shard i holds samples ``start + i * shard_size ..``; since sample number j depends only on (grammar,
seed, mode, j), shards can be written in any order, by any process, and a run that stops part-way is
resumed by writing the shards still missing. Every file is written to a temporary name and renamed
once complete, so a file under its final name is whole; a shard whose files are missing or do not hold
the expected shape (a truncated copy, say) is written again. The manifest's ``complete`` is true once
every shard is whole (false while shards are missing; absent in folders of older writers).

Before anything is written, the free space of the disk is checked against what the shards still missing
need (:class:`NotEnoughSpace`); a write that fails all the same (a full disk, say) removes its temporary
file, so only whole files stay.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from rhmfast._files import check_writable_dir, pid_alive
from rhmfast.data.grammar import RHM

FORMAT_NAME = "rhmfast.dataset"
FORMAT_VERSION = 1
MANIFEST = "dataset.json"
GRAMMAR = "grammar.json"
_TMP = ".tmp-"
# What makes two data sets the same: a folder written with other values is refused, never mixed.
_STREAM_KEYS = ("n", "start", "seed", "mode", "shard_size", "input_dim", "token_dtype")
TOKEN_DTYPES = ("uint8", "int16", "int32", "int64")
MODES = ("iid", "index")
_NPY_HEADER = 256  # bytes allowed per .npy header (numpy writes 128 for these shapes)


class NotEnoughSpace(ValueError):
    """The disk of a data set folder has less free space than the shards still to write need."""

    def __init__(self, message: str, needed: int, free: int, path: str):
        super().__init__(message)
        self.needed, self.free, self.path = needed, free, path


def _check_count(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _save_array(f, array: np.ndarray) -> None:
    """Write one shard file's array (the one place shard data reaches the disk)."""
    np.save(f, array)


def _remove_own_temporaries(path: str) -> None:
    """Remove the temporary files of this process that start with path (left by a write that failed)."""
    folder, prefix = os.path.split(path)
    prefix += f"{_TMP}{os.getpid()}"
    for name in os.listdir(folder or "."):
        if name.startswith(prefix):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass


def _write_atomic(path: str, write) -> None:
    """write(file) into a temporary file next to path, flushed to disk, then renamed to path; on any
    failure (a full disk, Ctrl-C) the temporary file is removed and the error raised again."""
    tmp = f"{path}{_TMP}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_own_temporaries(path)
        raise


def _write_grammar(grammar: RHM, path: str) -> None:
    """grammar.save, atomically and cleaned up on failure like the shards (whatever temporary name save
    itself uses starts with ours)."""
    tmp = f"{path}{_TMP}{os.getpid()}"
    try:
        grammar.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove_own_temporaries(path)
        raise


def _shard_names(index: int) -> tuple[str, str]:
    return f"tokens-{index:05d}.npy", f"labels-{index:05d}.npy"


@dataclass
class Dataset:
    """An opened data set folder: its manifest, grammar and shards (read with :meth:`shard`)."""

    path: str
    manifest: dict
    grammar: RHM

    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])

    def __len__(self) -> int:
        return self.manifest["n"]

    def shard(self, index: int, mmap: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, labels) of shard ``index`` as CPU tensors; with ``mmap`` they are copy-on-write
        memory maps of the files (pages are read when touched; writes never reach the files)."""
        if not 0 <= index < self.n_shards:
            raise IndexError(f"shard index must be in [0, {self.n_shards}), got {index}")
        arrays = []
        for name, (shape, dtype) in zip(self.manifest["shards"][index], _expected(self.manifest, index)):
            file = os.path.join(self.path, name)
            try:
                array = np.load(file, mmap_mode="c" if mmap else None)
            except (OSError, ValueError) as error:
                raise ValueError(f"{file}: shard {index} cannot be read ({_reason(error)}); the data set is "
                                 "incomplete or damaged: write_dataset (rhmfast generate) with the same "
                                 "arguments writes it again") from None
            if array.shape != shape or str(array.dtype) != dtype:
                raise ValueError(f"{file}: shard {index} holds {str(array.dtype)} {array.shape}, not {dtype} {shape}; "
                                 "write_dataset (rhmfast generate) with the same arguments writes it again")
            arrays.append(torch.from_numpy(array))
        return arrays[0], arrays[1]

    def missing(self) -> list[int]:
        """Indices of the shards whose files are missing or not whole (a data set being written, or one
        whose writer failed); write_dataset with the same arguments writes them."""
        return [i for i in range(self.n_shards) if not _shard_complete(self.path, self.manifest, i)]

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sample in memory: (tokens [n, s^L], labels [n])."""
        parts = [self.shard(i, mmap=False) for i in range(self.n_shards)]
        if not parts:
            return self.grammar.sample(0, seed=self.manifest["seed"], mode=self.manifest["mode"])
        return torch.cat([t for t, _ in parts]), torch.cat([y for _, y in parts])

    def verify(self) -> list[int]:
        """Indices of the shards whose contents differ from the stream (each is drawn again and compared)."""
        bad = []
        for i in range(self.n_shards):
            tokens, labels = self.shard(i)
            x, y = _draw(self.grammar, self.manifest, i)
            if not (torch.equal(tokens, x) and torch.equal(labels, y)):
                bad.append(i)
        return bad


def _draw(grammar: RHM, manifest: dict, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    first = index * manifest["shard_size"]
    count = min(manifest["shard_size"], manifest["n"] - first)
    return grammar.sample(count, seed=manifest["seed"], start=manifest["start"] + first, mode=manifest["mode"])


def _expected(manifest: dict, index: int) -> tuple:
    """((shape, dtype) of the tokens, (shape, dtype) of the labels) of shard index."""
    count = min(manifest["shard_size"], manifest["n"] - index * manifest["shard_size"])
    return ((count, manifest["input_dim"]), manifest["token_dtype"]), ((count,), "int64")


def _reason(error: Exception) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


def _shard_complete(path: str, manifest: dict, index: int) -> bool:
    """Both files of the shard exist, parse, and hold the expected shapes and dtypes."""
    for name, (shape, dtype) in zip(manifest["shards"][index], _expected(manifest, index)):
        try:
            array = np.load(os.path.join(path, name), mmap_mode="r")  # a short file fails to map
        except (OSError, ValueError):
            return False
        if array.shape != shape or str(array.dtype) != dtype:
            return False
    return True


def _clean_temporaries(path: str) -> None:
    """Remove temporary files of writers that no longer run (killed mid-write)."""
    for name in os.listdir(path):
        match = re.search(rf"{re.escape(_TMP)}(\d+)", name)
        if match and not pid_alive(int(match.group(1))):
            os.remove(os.path.join(path, name))


def _same_grammar(a: RHM, b: RHM) -> bool:
    return ((a.v, a.m, a.s, a.L, a.n_classes) == (b.v, b.m, b.s, b.L, b.n_classes)
            and all(torch.equal(x, y) for x, y in zip(a.rules, b.rules)))


def _check_manifest(file: str, manifest) -> dict:
    """The manifest read from file, if it holds every field a data set needs; ValueError naming the file
    and the field otherwise."""
    if not isinstance(manifest, dict):
        raise ValueError(f"{file}: not an rhmfast data set manifest (a JSON object), got a {type(manifest).__name__}")
    if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
        raise ValueError(f"{file}: not an rhmfast data set of version {FORMAT_VERSION} "
                         f"(format {manifest.get('format')!r}, version {manifest.get('version')!r})")

    def bad(key: str, what: str):
        got = repr(manifest[key]) if key in manifest else "nothing"
        return ValueError(f"{file}: {key} must be {what}, got {got[:100]}")

    for key, low in (("n", 0), ("start", 0), ("seed", 0), ("shard_size", 1), ("input_dim", 1)):
        value = manifest.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise bad(key, f"an int >= {low}")
    if manifest.get("mode") not in MODES:
        raise bad("mode", f"one of {MODES}")
    if manifest.get("token_dtype") not in TOKEN_DTYPES:
        raise bad("token_dtype", f"one of {TOKEN_DTYPES}")
    if manifest.get("complete", False) not in (True, False):
        raise bad("complete", "true or false")
    shards = manifest.get("shards")
    n_shards = -(-manifest["n"] // manifest["shard_size"])
    if not isinstance(shards, list) or len(shards) != n_shards:
        raise bad("shards", f"a list of {n_shards} [tokens file, labels file] pairs (n / shard_size)")
    for pair in shards:
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(name, str) and name and os.path.basename(name) == name and name not in (".", "..")
                           for name in pair)):
            raise bad("shards", "a list of [tokens file, labels file] pairs of file names in the folder")
    return manifest


def open_dataset(path: str | os.PathLike) -> Dataset:
    """Open a data set folder written by :func:`write_dataset` (complete or not; see Dataset.missing).
    A folder without a manifest is a FileNotFoundError; a manifest or grammar that cannot be read, or
    does not hold what the format promises, a ValueError naming the file."""
    path = os.fspath(path)
    file = os.path.join(path, MANIFEST)
    try:
        with open(file, "rb") as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} holds no rhmfast data set ({MANIFEST} is missing)") from None
    except OSError as error:
        raise ValueError(f"{file}: cannot read the data set's manifest ({_reason(error)})") from None
    except ValueError as error:  # not UTF-8, not JSON
        raise ValueError(f"{file}: the data set's manifest is not valid JSON ({error})") from None
    manifest = _check_manifest(file, manifest)
    grammar_file = os.path.join(path, GRAMMAR)
    try:
        grammar = RHM.load(grammar_file)
    except OSError as error:
        raise ValueError(f"{grammar_file}: cannot read the data set's grammar ({_reason(error)})") from None
    except ValueError as error:
        message = str(error).removeprefix("rhmfast: ")
        raise ValueError(message if grammar_file in message else f"{grammar_file}: {message}") from None
    if grammar.input_dim != manifest["input_dim"]:
        raise ValueError(f"{grammar_file}: the grammar's input length {grammar.input_dim} is not the manifest's "
                         f"input_dim {manifest['input_dim']} ({file})")
    return Dataset(path, manifest, grammar)


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _shard_bytes(manifest: dict, index: int) -> int:
    """Bytes of the two files of shard index (headers rounded up)."""
    (tokens_shape, dtype), _ = _expected(manifest, index)
    count, width = tokens_shape
    return count * (width * np.dtype(dtype).itemsize + 8) + 2 * _NPY_HEADER


def write_dataset(grammar: RHM, n: int, out: str | os.PathLike, *, seed: int = 0, start: int = 0,
                  mode: str = "iid", shard_size: int = 1 << 20, progress: bool = True) -> Dataset:
    """Write samples ``start .. start + n - 1`` of the stream (seed, mode) to the folder ``out``, in
    shards of ``shard_size`` samples, and return the opened data set.

    Resumable: shards already complete in ``out`` are kept, the others written, so calling it again
    after an interruption (Ctrl-C, a killed process, a full disk) finishes the job. Refused before anything
    is written (ValueError naming what is wrong): a folder that holds a data set of another grammar or
    stream (never mixed), an ``out`` that is a file or not writable, a folder in the place of a shard's
    file, and shards that need more space than the disk has free (:class:`NotEnoughSpace`, a ValueError).
    A write that fails all the same raises its OSError after removing its temporary file.
    """
    _check_count("n", n, 0)
    _check_count("start", start, 0)
    _check_count("shard_size", shard_size, 1)
    # An empty draw at the stream's end checks, before anything is written, what every shard will ask
    # of the sampler (seed, mode, start + n < 2^63, and <= pmax in index mode); it also gives the dtype.
    token_dtype = str(grammar.sample(0, seed=seed, start=start + n, mode=mode)[0].numpy().dtype)
    out = check_writable_dir(os.fspath(out), "out")
    n_shards = -(-n // shard_size)
    stream = {"n": n, "start": start, "seed": seed, "mode": mode, "shard_size": shard_size,
              "input_dim": grammar.input_dim, "token_dtype": token_dtype}
    existing = open_dataset(out) if os.path.exists(os.path.join(out, MANIFEST)) else None
    if existing is None:
        # Checked before the manifest (a list of every shard) is built: a huge n is refused cheaply.
        row = grammar.input_dim * np.dtype(token_dtype).itemsize + 8
        needed = n * row + n_shards * (2 * _NPY_HEADER + 2 * len('["tokens-00000.npy", "labels-00000.npy"],\n'))
        needed += 4096 + 12 * sum(t.numel() for t in (*grammar.rules, *grammar.parents))  # manifest, grammar
    else:
        for key in _STREAM_KEYS:
            if existing.manifest[key] != stream[key]:
                raise ValueError(f"{out} holds another data set: its {key} is {existing.manifest[key]!r}, "
                                 f"not {stream[key]!r} (write to another folder)")
        if not _same_grammar(existing.grammar, grammar):
            raise ValueError(f"{out} holds a data set of another grammar ({existing.grammar!r}); write to "
                             "another folder")
        needed = None
    free = shutil.disk_usage(_nearest_existing(out)).free
    if needed is not None and needed > free:
        raise NotEnoughSpace(f"n = {n} samples need {needed:,} bytes in {out}, but only {free:,} bytes are free "
                             "there", needed, free, out)
    manifest = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "grammar": GRAMMAR, **stream,
        "shards": [list(_shard_names(i)) for i in range(n_shards)],  # lists, as JSON reads them back
        "complete": False,
    }
    if existing is not None:
        manifest["shards"] = existing.manifest["shards"]
        _clean_temporaries(out)
    todo = [i for i in range(n_shards) if not _shard_complete(out, manifest, i)] if existing is not None \
        else list(range(n_shards))
    for i in todo if os.path.isdir(out) else []:
        for name in manifest["shards"][i]:
            if os.path.isdir(os.path.join(out, name)):
                raise ValueError(f"{os.path.join(out, name)}: a folder stands where shard {i}'s file goes; "
                                 "remove it (or write to another folder)")
    if existing is not None:
        needed = sum(_shard_bytes(manifest, i) for i in todo)
        if needed > free:
            raise NotEnoughSpace(f"the {len(todo)} shards of {out} still missing (n = {n} samples in all) need "
                                 f"{needed:,} bytes, but only {free:,} bytes are free there", needed, free, out)
    os.makedirs(out, exist_ok=True)
    if existing is None:
        _write_grammar(grammar, os.path.join(out, GRAMMAR))
        _write_manifest(out, manifest)
    elif todo and existing.manifest.get("complete") is not False:  # damaged shards: no longer complete
        _write_manifest(out, manifest)
    done = n - sum(min(shard_size, n - i * shard_size) for i in todo)
    with tqdm(total=n, initial=done, unit="sample", unit_scale=True, desc=f"writing {out}",
              disable=not progress) as bar:
        for i in todo:
            tokens, labels = _draw(grammar, manifest, i)
            for name, array in zip(manifest["shards"][i], (tokens.numpy(), labels.numpy())):
                _write_atomic(os.path.join(out, name), lambda f, a=array: _save_array(f, a))
            bar.update(len(labels))
    # complete once every shard is whole: another writer of this folder may still be at work
    if (todo or existing is None or existing.manifest.get("complete") is not True) and \
            all(_shard_complete(out, manifest, i) for i in range(n_shards)):
        _write_manifest(out, {**manifest, "complete": True})
    return open_dataset(out)


def _write_manifest(out: str, manifest: dict) -> None:
    _write_atomic(os.path.join(out, MANIFEST), lambda f: f.write(json.dumps(manifest, indent=1).encode()))
