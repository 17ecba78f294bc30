"""Data sets on disk (rhmfast.data.dataset, ``rhmfast generate --out``): exact contents, resuming after an
interruption, damaged shards redone, foreign folders refused."""
import json
import os

import numpy as np
import pytest
import torch

import rhmfast
from rhmfast.__main__ import main
from rhmfast.data.dataset import open_dataset, write_dataset


@pytest.fixture
def grammar():
    return rhmfast.RHM(8, 2, 2, 3, seed=4)


@pytest.mark.parametrize("mode,start", [("iid", 0), ("iid", 123), ("index", 7)])
def test_written_samples_are_the_stream(tmp_path, grammar, mode, start):
    """1000 samples in shards of 300 (the last one short) hold exactly samples start .. start + 999."""
    dataset = write_dataset(grammar, 1000, tmp_path, seed=3, start=start, mode=mode, shard_size=300, progress=False)
    assert dataset.n_shards == 4 and len(dataset) == 1000
    tokens, labels = dataset.load()
    x, y = grammar.sample(1000, seed=3, start=start, mode=mode)
    assert tokens.dtype == torch.uint8 and torch.equal(tokens, x) and torch.equal(labels, y)
    last_tokens, last_labels = dataset.shard(3)
    assert last_tokens.shape == (100, 8) and torch.equal(last_labels, y[900:])
    reopened = open_dataset(tmp_path)
    assert reopened.manifest == dataset.manifest
    assert all(torch.equal(a, b) for a, b in zip(reopened.grammar.rules, grammar.rules))
    assert reopened.verify() == []


def test_memory_mapped_shards_are_copy_on_write(tmp_path, grammar):
    dataset = write_dataset(grammar, 50, tmp_path, shard_size=50, progress=False)
    tokens, _ = dataset.shard(0)
    tokens[0, 0] = 99  # changes the mapping, never the file
    assert dataset.verify() == []


def test_resume_keeps_complete_shards_and_redoes_damaged_ones(tmp_path, grammar):
    write_dataset(grammar, 1000, tmp_path, shard_size=250, progress=False)
    kept = os.stat(tmp_path / "tokens-00000.npy").st_ino, os.stat(tmp_path / "labels-00000.npy").st_ino  # a rewrite renames a new file in
    os.remove(tmp_path / "labels-00001.npy")  # a shard half written
    with open(tmp_path / "tokens-00002.npy", "r+b") as f:  # a truncated copy
        f.truncate(300)
    np.save(tmp_path / "labels-00003.npy", np.zeros(7, dtype=np.int64))  # a file of the wrong shape
    (tmp_path / f"tokens-00001.npy.tmp-{2 ** 22 + 12345}").write_bytes(b"left by a killed writer")
    dataset = write_dataset(grammar, 1000, tmp_path, shard_size=250, progress=False)
    assert dataset.verify() == []
    assert (os.stat(tmp_path / "tokens-00000.npy").st_ino, os.stat(tmp_path / "labels-00000.npy").st_ino) == kept
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]


def test_interrupted_write_resumes_to_the_same_data_set(tmp_path, grammar, monkeypatch):
    """Ctrl-C after two shards keeps them; running again writes the rest, and the result is the stream."""
    calls = []
    sample = rhmfast.RHM.sample

    def interrupting(self, *args, **kwargs):
        if len(calls) == 3:  # the size probe, then two shards
            raise KeyboardInterrupt
        calls.append(1)
        return sample(self, *args, **kwargs)

    monkeypatch.setattr(rhmfast.RHM, "sample", interrupting)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(grammar, 1000, tmp_path, seed=9, shard_size=200, progress=False)
    monkeypatch.setattr(rhmfast.RHM, "sample", sample)
    assert sorted(name for name in os.listdir(tmp_path) if name.startswith("tokens")) == \
        ["tokens-00000.npy", "tokens-00001.npy"]
    dataset = write_dataset(grammar, 1000, tmp_path, seed=9, shard_size=200, progress=False)
    x, y = grammar.sample(1000, seed=9)
    tokens, labels = dataset.load()
    assert torch.equal(tokens, x) and torch.equal(labels, y)


def test_verify_finds_a_changed_sample(tmp_path, grammar):
    dataset = write_dataset(grammar, 600, tmp_path, shard_size=200, progress=False)
    array = np.load(tmp_path / "tokens-00002.npy")
    array[17, 3] ^= 1
    np.save(tmp_path / "tokens-00002.npy", array)
    assert dataset.verify() == [2]


@pytest.mark.parametrize("change,what", [
    (dict(seed=1), "seed"), (dict(n=999), "n"), (dict(shard_size=100), "shard_size"), (dict(mode="index"), "mode"),
    (dict(start=5), "start"),
])
def test_a_folder_of_another_data_set_is_refused(tmp_path, grammar, change, what):
    args = dict(n=1000, seed=0, start=0, mode="iid", shard_size=200)
    write_dataset(grammar, out=tmp_path, progress=False, **args)
    with pytest.raises(ValueError, match=f"its {what} is"):
        write_dataset(grammar, out=tmp_path, progress=False, **{**args, **change})


def test_a_folder_of_another_grammar_is_refused(tmp_path, grammar):
    write_dataset(grammar, 100, tmp_path, progress=False)
    with pytest.raises(ValueError, match="another grammar"):
        write_dataset(rhmfast.RHM(8, 2, 2, 3, seed=5), 100, tmp_path, progress=False)


def test_index_mode_of_a_huge_grammar_is_refused_before_anything_is_written(tmp_path):
    huge = rhmfast.RHM(64, 8, 2, 6, seed=0)  # pmax = 64 * 8^63
    with pytest.raises(ValueError, match="pmax < 2\\^63"):
        write_dataset(huge, 10, tmp_path / "d", mode="index", progress=False)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(n=-1), ValueError, r"n must be >= 0"),
    (dict(n=10, shard_size=0), ValueError, r"shard_size must be >= 1"),
    (dict(n=10, start=-2), ValueError, r"start must be >= 0"),
    (dict(n=2.5), TypeError, r"n must be an int"),
    (dict(n=10, mode="foo"), ValueError, r"mode must be 'iid' or 'index'"),
    (dict(n=10 ** 9, mode="index"), ValueError, r"pmax = "),
    (dict(n=10, seed=-1), ValueError, r"seed must be in \[0, "),
    (dict(n=10, seed=1.5), TypeError, r"seed must be an int"),
    (dict(n=10, start=2 ** 63 - 5), ValueError, r"start \+ n must be < 2\^63"),
])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, grammar, kwargs, error, match):
    with pytest.raises(error, match=match):
        write_dataset(grammar, out=tmp_path / "d", progress=False, **kwargs)
    assert not (tmp_path / "d").exists()


def test_open_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no rhmfast data set"):
        open_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not an rhmfast data set"):
        open_dataset(tmp_path)


def test_empty_data_set(tmp_path, grammar):
    dataset = write_dataset(grammar, 0, tmp_path, progress=False)
    tokens, labels = dataset.load()
    assert dataset.n_shards == 0 and tokens.shape == (0, 8) and labels.shape == (0,)


def test_generate_command_writes_verifies_and_resumes(tmp_path, capsys):
    argv = ["generate", "--v", "8", "--m", "2", "--L", "3", "--n", "700", "--shard", "256", "--seed_rules", "4",
            "--seed_sample", "2", "--out", str(tmp_path), "--verify"]
    main(argv)
    out = capsys.readouterr().out
    assert "700 samples in 3 shards" in out and "all 3 shards equal the stream" in out
    tokens, labels = open_dataset(tmp_path).load()
    x, y = rhmfast.RHM(8, 2, 2, 3, seed=4).sample(700, seed=2)
    assert torch.equal(tokens, x) and torch.equal(labels, y)
    os.remove(tmp_path / "tokens-00001.npy")
    main(argv)
    assert open_dataset(tmp_path).verify() == []
    with pytest.raises(SystemExit, match="its seed is 2, not 3"):
        main([*argv[:-4], "3", "--out", str(tmp_path)])


def test_generate_command_without_out_only_measures(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["generate", "--v", "8", "--m", "2", "--L", "3", "--n", "1000", "--shard", "300"])
    assert "generated 1,000 samples" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


def test_generate_command_refuses_bad_flags(tmp_path):
    with pytest.raises(SystemExit, match="--shard must be >= 1"):
        main(["generate", "--shard", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"rhmfast generate: .*m"):
        main(["generate", "--v", "2", "--m", "9", "--L", "2", "--n", "10"])
    with pytest.raises(SystemExit, match=r"rhmfast generate: .*pmax"):  # caught before any sampling
        main(["generate", "--v", "4", "--m", "2", "--L", "2", "--n", "1000", "--mode", "index"])
