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
the expected shape (a truncated copy, say) is written again.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from rhmfast._files import pid_alive
from rhmfast.data.grammar import RHM

FORMAT_NAME = "rhmfast.dataset"
FORMAT_VERSION = 1
MANIFEST = "dataset.json"
GRAMMAR = "grammar.json"
_TMP = ".tmp-"
# What makes two data sets the same: a folder written with other values is refused, never mixed.
_STREAM_KEYS = ("n", "start", "seed", "mode", "shard_size", "input_dim", "token_dtype")


def _check_count(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _write_atomic(path: str, write) -> None:
    """write(file) into a temporary file next to path, flushed to disk, then renamed to path."""
    tmp = f"{path}{_TMP}{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
        mode = "c" if mmap else None
        tokens, labels = (np.load(os.path.join(self.path, name), mmap_mode=mode)
                          for name in self.manifest["shards"][index])
        return torch.from_numpy(tokens), torch.from_numpy(labels)

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


def _shard_complete(path: str, manifest: dict, index: int) -> bool:
    """Both files of the shard exist, parse, and hold the expected shapes and dtypes."""
    count = min(manifest["shard_size"], manifest["n"] - index * manifest["shard_size"])
    expected = ((count, manifest["input_dim"]), manifest["token_dtype"]), ((count,), "int64")
    for name, (shape, dtype) in zip(manifest["shards"][index], expected):
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
        match = re.fullmatch(rf".*{re.escape(_TMP)}(\d+)", name)
        if match and not pid_alive(int(match.group(1))):
            os.remove(os.path.join(path, name))


def _same_grammar(a: RHM, b: RHM) -> bool:
    return ((a.v, a.m, a.s, a.L, a.n_classes) == (b.v, b.m, b.s, b.L, b.n_classes)
            and all(torch.equal(x, y) for x, y in zip(a.rules, b.rules)))


def open_dataset(path: str | os.PathLike) -> Dataset:
    """Open a data set folder written by :func:`write_dataset` (complete or not)."""
    path = os.fspath(path)
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} holds no rhmfast data set ({MANIFEST} is missing)") from None
    if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}/{MANIFEST}: not an rhmfast data set of version {FORMAT_VERSION} "
                         f"(format {manifest.get('format')!r}, version {manifest.get('version')!r})")
    return Dataset(path, manifest, RHM.load(os.path.join(path, GRAMMAR)))


def write_dataset(grammar: RHM, n: int, out: str | os.PathLike, *, seed: int = 0, start: int = 0,
                  mode: str = "iid", shard_size: int = 1 << 20, progress: bool = True) -> Dataset:
    """Write samples ``start .. start + n - 1`` of the stream (seed, mode) to the folder ``out``, in
    shards of ``shard_size`` samples, and return the opened data set.

    Resumable: shards already complete in ``out`` are kept, the others written, so calling it again
    after an interruption (Ctrl-C, a killed process) finishes the job. A folder that holds a data set
    of another grammar or stream is refused (ValueError naming what differs), never mixed.
    """
    _check_count("n", n, 0)
    _check_count("start", start, 0)
    _check_count("shard_size", shard_size, 1)
    # An empty draw at the stream's end checks, before anything is written, what every shard will ask
    # of the sampler (seed, mode, start + n < 2^63, and <= pmax in index mode); it also gives the dtype.
    token_dtype = str(grammar.sample(0, seed=seed, start=start + n, mode=mode)[0].numpy().dtype)
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    n_shards = -(-n // shard_size)
    manifest = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "grammar": GRAMMAR,
        "n": n, "start": start, "seed": seed, "mode": mode, "shard_size": shard_size,
        "input_dim": grammar.input_dim, "token_dtype": token_dtype,
        "shards": [list(_shard_names(i)) for i in range(n_shards)],  # lists, as JSON reads them back
    }
    if os.path.exists(os.path.join(out, MANIFEST)):
        existing = open_dataset(out)
        for key in _STREAM_KEYS:
            if existing.manifest[key] != manifest[key]:
                raise ValueError(f"{out} holds another data set: its {key} is {existing.manifest[key]!r}, "
                                 f"not {manifest[key]!r} (write to another folder)")
        if not _same_grammar(existing.grammar, grammar):
            raise ValueError(f"{out} holds a data set of another grammar ({existing.grammar!r}); write to "
                             "another folder")
        _clean_temporaries(out)
    else:
        grammar.save(os.path.join(out, GRAMMAR))
        _write_atomic(os.path.join(out, MANIFEST), lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    todo = [i for i in range(n_shards) if not _shard_complete(out, manifest, i)]
    done = n - sum(min(shard_size, n - i * shard_size) for i in todo)
    with tqdm(total=n, initial=done, unit="sample", unit_scale=True, desc=f"writing {out}",
              disable=not progress) as bar:
        for i in todo:
            tokens, labels = _draw(grammar, manifest, i)
            for name, array in zip(manifest["shards"][i], (tokens.numpy(), labels.numpy())):
                _write_atomic(os.path.join(out, name), lambda f, a=array: np.save(f, a))
            bar.update(len(labels))
    return open_dataset(out)
