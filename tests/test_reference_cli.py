"""``rhmfast train`` (and ``sweep``) on the 2024 pcsl-epfl random-hierarchy-model library's command line:
every flag of its main.py accepted with its meaning (--mode masked, --num_tokens, its hlcn and transformer
included), its defaults, its training data, and its output file (--outname: pickle.dump(args), then
pickle.dump(output)) as its notebooks read it.

The library's README documents no command line (it is three lines long), so the command lines here are
main.py's flags written out in full, one per model, with sizes small enough to run in seconds (the
flags are all there; only the sizes are small)."""
from __future__ import annotations

import argparse
import os
import pickle
import random
import re
import subprocess
import sys

import pytest
import torch

import rhmfast.__main__ as cli
from rhmfast import RHM
from rhmfast.data.grammar import RHM as GrammarClass
from rhmfast.studies import reference_cli
from rhmfast.studies.runs import DEFAULTS, MODELS, complete_config, config_hash, print_checkpoints, sgd_arguments
from rhmfast.studies.store import ResultStore

MIRROR = "/work/.mirror/pcsl-epfl+random-hierarchy-model/repo"

# Every flag of main.py; sizes small (P = 64, width 8, 12 epochs), --device cpu (its default is cuda)
HCNN_COMMAND = ("--device cpu --dataset rhm --num_features 8 --num_classes 8 --num_synonyms 2 --tuple_size 2 "
                "--num_layers 3 --seed_rules 1 --num_tokens 8 --train_size 64 --batch_size 16 --test_size 32 "
                "--seed_sample 3 --input_format onehot --whitening 0 --model hcnn --depth 3 --width 8 "
                "--filter_size 2 --bias --seed_model 4 --lr 0.1 --optim sgd --momentum 0.9 --scheduler cosine "
                "--scheduler_time 12 --max_epochs 12 --print_freq 10 --save_freq 10 --loss_threshold 0.001")
# The library's masked mode with its transformer: the last token of a window of 4, hidden, is the target
MLA_COMMAND = ("--device cpu --dataset rhm --mode masked --num_features 8 --num_classes 8 --num_synonyms 2 "
               "--tuple_size 2 --num_layers 3 --seed_rules 1 --num_tokens 4 --train_size 64 --batch_size 16 "
               "--test_size 32 --seed_sample 3 --input_format onehot --model transformer_mla --depth 2 --num_heads 2 "
               "--embedding_dim 16 --seed_model 4 --lr 0.1 --optim sgd --max_epochs 6 --print_freq 2")
FCN_COMMAND = ("--device cpu --dataset rhm --num_features 4 --num_classes 4 --num_synonyms 2 --tuple_size 2 "
               "--num_layers 3 --seed_rules 0 --num_tokens 8 --train_size 32 --batch_size 8 --test_size 16 "
               "--seed_sample 1 --replacement --input_format onehot --whitening 1 --model fcn --depth 2 --width 8 "
               "--seed_model 2 "
               "--lr 0.05 --optim adam --accumulation --momentum 0.9 --scheduler warmup --scheduler_time 3 "
               "--max_epochs 7 --print_freq 2 --save_freq 4 --loss_threshold 0.0001")


def main_py_flags() -> list[str]:
    """The flags of the library's main.py: read from the mirror when it is there, else reference_cli.FLAGS."""
    try:
        text = subprocess.run(["git", "-C", MIRROR, "show", "HEAD:main.py"], capture_output=True, text=True,
                              check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return [flag for flag, _, _ in reference_cli.FLAGS]
    return re.findall(r"add_argument\(\s*['\"](--\w+)['\"]", text)


def load_outname(path):
    """As the library's notebooks read its output: two pickle.load calls."""
    with open(path, "rb") as f:
        args = pickle.load(f)
        output = pickle.load(f)
        assert f.read() == b""
    return args, output


def run_cli(command: str, tmp_path, name: str):
    out = tmp_path / f"{name}.pkl"
    argv = [sys.executable, "-m", "rhmfast", "train", *command.split(), "--outname", str(out),
            "--out", str(tmp_path / "store")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def check_state(state: dict, shapes: dict) -> None:
    assert list(state) == list(shapes)  # the library's names, in its state dict's order
    for key, shape in shapes.items():
        assert isinstance(state[key], torch.Tensor) and tuple(state[key].shape) == shape, key
        assert state[key].dtype == torch.float32 and state[key].device.type == "cpu"


def check_output(args, output, print_epochs, last_epoch, shapes) -> None:
    flags = main_py_flags()
    assert isinstance(args, argparse.Namespace)
    assert list(vars(args)) == [flag[2:] for flag in flags] + ["input_size"]  # main.py's, then init.py's
    assert set(output) == {"init", "best", "model", "dynamics", "epoch"} and output["epoch"] == last_epoch
    check_state(output["init"], shapes)
    check_state(output["model"], shapes)
    assert any(not torch.equal(output["init"][k], output["model"][k]) for k in shapes)  # it trained
    dynamics = output["dynamics"]
    assert [d["t"] for d in dynamics] == [0] + [e for e in print_epochs if e <= last_epoch]
    for d in dynamics:
        assert list(d) == ["t", "trainloss", "testloss", "testacc"]
        assert isinstance(d["t"], int) and all(isinstance(d[k], float) for k in ("trainloss", "testloss", "testacc"))
        assert 0.0 <= d["testacc"] <= 1.0 and d["trainloss"] > 0 and d["testloss"] > 0
    best = output["best"]
    assert list(best) == ["epoch", "model", "loss", "acc"]
    losses = {d["t"]: d["testloss"] for d in dynamics}
    assert best["loss"] == min(losses.values()) and losses[best["epoch"]] == best["loss"]
    if best["epoch"] == 0:
        assert best["model"] is None
    else:
        check_state(best["model"], shapes)


def test_every_flag_of_the_library_main_py_is_a_train_flag_and_the_grid_flags_sweep_flags():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    train = {option for action in commands["train"]._actions for option in action.option_strings}
    sweep = {option for action in commands["sweep"]._actions for option in action.option_strings}
    flags = main_py_flags()
    assert len(flags) == 36 and set(flags) == {flag for flag, _, _ in reference_cli.FLAGS}
    assert set(flags) <= train
    assert set(flags) - {"--outname", "--save_freq"} <= sweep  # --device: sweep's own


def test_the_hcnn_command_line_writes_the_library_output_file(tmp_path):
    out, proc = run_cli(HCNN_COMMAND, tmp_path, "hcnn")
    assert "Epoch :  10" in proc.stdout + proc.stderr and "saving data" in proc.stdout + proc.stderr
    args, output = load_outname(out)
    assert (args.train_size, args.batch_size, args.test_size, args.model, args.depth, args.filter_size) == (
        64, 16, 32, "hcnn", 3, 2)
    assert args.lr == pytest.approx(0.1 * 8) and args.scheduler_time == 12 and args.input_size == 8
    assert args.outname == str(out) and args.bias is True and args.whitening == 0 and args.device == "cpu"
    # hCNN.state_dict(): its own parameter first, then hidden.{l} = Sequential(MyConv1d(filter, bias), ReLU)
    shapes = {"readout": (8, 8)}
    for l in range(3):
        shapes.update({f"hidden.{l}.0.filter": (8, 8, 2), f"hidden.{l}.0.bias": (8,)})
    check_output(args, output, print_checkpoints(10, 12), 12, shapes)
    # the weights load back into rhmfast's model and compute what the stored record says
    from rhmfast.models import HierarchicalCNN

    model = HierarchicalCNN.from_reference(output["model"])
    g = RHM(8, 2, 2, 3, seed=1)
    _, (x_test, y_test) = g.split(64, 32, seed=3, order="pcsl")
    (record,) = ResultStore(tmp_path / "store").records()
    wrong = (model(x_test).argmax(1) != y_test).float().mean().item()
    assert wrong == pytest.approx(record["test_error"])
    assert record["config"]["order"] == "pcsl" and record["config"]["print_freq"] == 10
    curve = record["result"]["curve"]
    assert curve[0]["epoch"] == 0 and {"test_loss", "test_accuracy"} <= set(curve[-1])


def test_the_fcn_command_line_writes_the_library_output_file(tmp_path):
    out, _ = run_cli(FCN_COMMAND, tmp_path, "fcn")
    args, output = load_outname(out)
    assert (args.model, args.depth, args.width, args.whitening, args.optim, args.accumulation, args.replacement) == (
        "fcn", 2, 8, 1, "adam", True, True)
    assert args.lr == pytest.approx(0.05 * 8) and args.filter_size is None
    shapes = {"readout": (8, 4), "hidden.0.0.weight": (8, 32), "hidden.1.0.weight": (8, 8)}
    check_output(args, output, print_checkpoints(2, 7), 7, shapes)


def _drawn(monkeypatch, argv):
    """The splits train_sgd draws while cli.main(argv) runs: (grammar, args, kwargs, result)."""
    drawn = []
    split = GrammarClass.split

    def spy(self, *a, **k):
        result = split(self, *a, **k)
        drawn.append((self, a, k, result))
        return result

    monkeypatch.setattr(GrammarClass, "split", spy)
    cli.main(argv)
    monkeypatch.setattr(GrammarClass, "split", split)
    return drawn


def test_library_flags_train_on_the_library_training_and_test_sets(tmp_path, monkeypatch):
    """The data train_sgd gets under the library's flags: its random.sample of datum numbers, decoded."""
    drawn = _drawn(monkeypatch, ["train", *HCNN_COMMAND.split(), "--max_epochs", "2", "--outname",
                                 str(tmp_path / "a.pkl"), "--out", str(tmp_path / "store")])
    ((g, a, k, ((x_train, y_train), (x_test, y_test))),) = drawn
    assert k["order"] == "pcsl" and (g.v, g.m, g.s, g.L, g.n_classes, g.seed, g.sampler) == (8, 2, 2, 3, 8, 1, "pcsl")
    state = random.getstate()
    random.seed(3)  # the library: random.seed(seed_sample); random.sample(range(max_data), P + P_test)
    datum = random.sample(range(g.pmax), 64 + 32)
    random.setstate(state)
    x, y = g.decode(datum)
    assert torch.equal(x_train, x[:64]) and torch.equal(y_train, y[:64])
    assert torch.equal(x_test, x[64:]) and torch.equal(y_test, y[64:])


def test_library_replacement_flag_trains_on_the_library_with_replacement_draw(tmp_path, monkeypatch):
    """--replacement: its torch.Generator(seed_sample) draw of labels, then of every node's rule."""
    drawn = _drawn(monkeypatch, ["train", *HCNN_COMMAND.split(), "--replacement", "--max_epochs", "2",
                                 "--outname", str(tmp_path / "a.pkl"), "--out", str(tmp_path / "store")])
    ((g, a, k, ((x_train, y_train), (x_test, y_test))),) = drawn
    assert k["order"] == "pcsl" and k["replacement"] is True
    gen = torch.Generator()
    gen.manual_seed(3)
    y = torch.randint(low=0, high=8, size=(64 + 32,), generator=gen)
    x = y
    for level in range(3):
        chosen = torch.randint(low=0, high=2, size=x.shape, generator=gen)
        x = g.rules[level][x, chosen].flatten(start_dim=1)
    assert torch.equal(x_train.long(), x[:64]) and torch.equal(y_train, y[:64])
    assert torch.equal(x_test.long(), x[64:]) and torch.equal(y_test, y[64:])


def test_library_mode_defaults_and_their_hash():
    parser = cli.build_parser()

    def configs(*argv):
        args = parser.parse_args(["train", *argv])
        args.argv = ["train", *argv]
        return cli._grid_from_args(args)

    (c,) = configs("--num_synonyms", "2", "--P", "100", "--batch_size", "20", "--n_test", "50")
    assert (c["order"], c["max_epochs"], c["print_freq"], c["stop_check"], c["eval_at_start"], c["eval_every"]) == (
        "pcsl", 100, 10, "eval", True, None)
    assert sgd_arguments(c)["eval_every"] == print_checkpoints(10, 100) == [1, 2, 3, 5, 6, 7] + list(range(10, 101, 10))
    (own,) = configs("--m", "2", "--P", "100", "--batch_size", "20", "--n_test", "50")
    assert own == complete_config(dict(m=2, P=100, batch_size=20, n_test=50)) and own["order"] == "rhmfast"
    (off,) = configs("--num_synonyms", "2", "--P", "100", "--batch_size", "20", "--n_test", "50", "--defaults",
                     "rhmfast")
    assert off == own
    (on,) = configs("--m", "2", "--P", "100", "--batch_size", "20", "--n_test", "50", "--defaults", "pcsl")
    assert on == c
    (given,) = configs("--train_size", "100", "--max_steps", "50", "--eval_every", "3", "--stop_check", "epoch",
                       "--order", "rhmfast", "--batch_size", "500", "--n_test", "50")
    assert (given["max_epochs"], given["print_freq"], given["eval_every"], given["stop_check"], given["order"],
            given["batch_size"]) == (None, None, 3, "epoch", "rhmfast", 100)  # batch clipped to P, as there
    # the new keys stay out of the hash at their defaults (the stored runs keep their names), not otherwise
    assert config_hash(dict(P=100)) == "dad93df21f840f68f28b"
    assert config_hash(dict(P=100, order="rhmfast", optimizer="sgd", scheduler=None, accumulation=False,
                            replacement=False, whiten=False, stop_check="epoch", eval_at_start=False)) == \
        "dad93df21f840f68f28b"
    for key, value in (("order", "pcsl"), ("optimizer", "adam"), ("scheduler", "warmup"), ("accumulation", True),
                       ("replacement", True), ("whiten", True), ("print_freq", 10), ("eval_every", 2),
                       ("stop_check", "eval"), ("eval_at_start", True)):
        assert config_hash(dict(P=100, **{key: value})) != "dad93df21f840f68f28b", key
    assert set(reference_cli.LIBRARY_DEFAULTS) <= set(DEFAULTS)


LIBRARY_RUN = ["--num_features", "8", "--num_synonyms", "2", "--tuple_size", "2", "--num_layers", "3",
               "--train_size", "64", "--batch_size", "16", "--test_size", "32"]


def library_configs(*extra) -> list[dict]:
    parser = cli.build_parser()
    argv = ["train", *LIBRARY_RUN, *extra]
    args = parser.parse_args(argv)
    args.argv = argv
    return cli._grid_from_args(args)


# (the library's flags, the completed run config's task, context, model, width, heads, depth)
@pytest.mark.parametrize("extra, expected", [
    ("--mode masked", ("last-token", 8, "hcnn", 64, None, None)),
    ("--mode masked --num_tokens 4 --model hcnn --depth 2 --filter_size 2 --width 8",
     ("last-token", 4, "hcnn", 8, None, None)),
    ("--mode masked --num_tokens 3 --model fcn --depth 1 --width 8", ("last-token", 3, "fcn", 8, None, 1)),
    ("--model hlcn --depth 3 --filter_size 2 --width 8", ("classify", None, "hlcn", 8, None, None)),
    ("--model hlcn --mode masked --num_tokens 2 --depth 1 --filter_size 2", ("last-token", 2, "hlcn", 64, None, None)),
    ("--model transformer_mla --num_heads 2 --embedding_dim 16 --depth 2", ("classify", None, "mla", 16, 2, 2)),
    ("--model transformer_mla --mode masked --num_tokens 5 --input_format long",
     ("last-token", 5, "mla", 128, 4, 3)),  # rhmfast's defaults: embedding 128, 4 heads, L layers
    ("--model transformer_mla --mode masked --num_tokens 8 --input_format onehot --num_heads 1",
     ("last-token", 8, "mla", 128, 1, 3)),
    ("--model transformer_bert --num_heads 2 --embedding_dim 8 --depth 1", ("classify", None, "encoder", 8, 2, 1)),
    ("--model transformer_mla --width 64 --embedding_dim 16", ("classify", None, "mla", 16, 4, 3)),  # as there
    ("--model transformer_mla --width 64", ("classify", None, "mla", 64, 4, 3)),
    ("--task last-token --context 4 --num_tokens 4", ("last-token", 4, "hcnn", 64, None, None)),
    ("--mode masked --task last-token --context 2", ("last-token", 2, "hcnn", 64, None, None)),
    ("--defaults rhmfast --mode masked --num_tokens 4 --model mla --num_heads 8",
     ("last-token", 4, "mla", 128, 8, 3)),
])
def test_library_flags_give_the_run_config(extra, expected):
    (c,) = library_configs(*extra.split())
    assert (c["task"], c["context"], c["model"], c["width"], c["heads"], c["depth"]) == expected
    assert c["order"] == ("rhmfast" if "--defaults rhmfast" in extra else "pcsl")
    assert c == complete_config(c)


def test_library_model_names_are_rhmfast_models_and_give_the_library_defaults():
    (c,) = library_configs("--model", "transformer_mla")
    assert (c["model"], c["order"], c["max_epochs"], c["print_freq"], c["eval_at_start"]) == ("mla", "pcsl", 100, 10,
                                                                                            True)
    argv = ["train", "--model", "transformer_bert", "--v", "8", "--m", "2", "--L", "3", "--P", "64", "--n_test", "32"]
    args = cli.build_parser().parse_args(argv)
    args.argv = argv  # rhmfast's spellings but the model's name
    (c,) = cli._grid_from_args(args)
    assert (c["model"], c["order"], c["max_epochs"]) == ("encoder", "pcsl", 100)
    # a grid: the transformer flags reach the transformers only, --mode masked every model
    hcnn, mla = library_configs("--model", "hcnn,transformer_mla", "--num_heads", "2", "--mode", "masked")
    assert (hcnn["model"], hcnn["heads"], hcnn["task"]) == ("hcnn", None, "last-token")
    assert (mla["model"], mla["heads"], mla["task"]) == ("mla", 2, "last-token")
    # several widths become one embedding dimension: one run
    (c,) = library_configs("--model", "transformer_mla", "--width", "32,64", "--embedding_dim", "16")
    assert c["width"] == 16


def test_the_flags_say_nothing_is_coming():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    helps = [action.help or "" for name in ("train", "sweep") for action in commands[name]._actions]
    assert not [text for text in helps + [what for _, what, _ in reference_cli.FLAGS] if "coming" in text]
    assert reference_cli.MODEL_NAMES == {"transformer_mla": "mla", "transformer_bert": "encoder"}
    assert set(reference_cli.MODEL_NAMES.values()) <= set(MODELS)


@pytest.mark.parametrize("extra, message", [
    (["--mode", "unmasked"], "--mode: the library knows only 'masked'"),
    (["--mode", "masked", "--task", "classify"], "--mode masked is the task last-token; --task classify"),
    (["--mode", "masked", "--num_tokens", "4", "--context", "2"], "--context goes with --task last-token"),
    (["--mode", "masked", "--num_tokens", "4", "--task", "last-token", "--context", "2"],
     "--num_tokens 4 and --context 2 both give"),
    (["--mode", "masked", "--num_tokens", "9"], "--num_tokens 9: .* give 1 <= num_tokens <= 8"),
    (["--mode", "masked", "--num_tokens", "0"], "--num_tokens must be >= 1"),
    (["--mode", "masked", "--num_tokens", "4", "--depth", "3"],
     "--depth 3: the hcnn has one layer per level of its 4 input tokens, depth = 2 .*keeps all L = 3 levels"),
    (["--mode", "masked", "--num_tokens", "3", "--depth", "2"], "--depth 2: .* 3 tokens is no power of s = 2"),
    (["--mode", "masked", "--outname", "run.pkl"], "--outname with --mode masked"),
    (["--mode", "masked", "--model", "ren"], "task 'last-token' is learned end to end"),
    (["--model", "transformer_gpt"], "--model transformer_gpt: the library's transformer is transformer_mla"),
    (["--model", "transformer_mla", "--defaults", "rhmfast"], "with --defaults rhmfast write --model mla"),
    (["--model", "transformer_mla", "--num_heads", "3", "--embedding_dim", "16"],
     "--num_heads must divide --embedding_dim .* 3 heads and embedding dimension 16"),
    (["--model", "transformer_mla", "--embedding_dim", "10"], "--num_heads must divide --embedding_dim"),
    (["--model", "transformer_mla", "--whitening", "1"], "whiten is an option of the hcnn, fc and fcn"),
    (["--embedding_dim", "16"], "--embedding_dim is a transformer flag .* the run's model is hcnn"),
    (["--model", "hlcn", "--num_heads", "2"], "--num_heads is a transformer flag .* the run's model is hlcn"),
    (["--input_format", "long"], "--input_format long .* the transformers only; the library's hcnn reads one-hot"),
    (["--input_format", "onehot_tuples"], "--input_format onehot_tuples: not one rhmfast has"),
    (["--dataset", "cifar10"], "--dataset must be rhm"),
    (["--num_tokens", "4"], "--num_tokens 4: the root label is the target here, of all s\\^L = 8 tokens"),
    (["--task", "last-token", "--context", "2", "--num_tokens", "4"], "--num_tokens 4: the masked window is context"),
    (["--filter_size", "4"], "--filter_size 4: the hcnn's filters .* s = 2"),
    (["--model", "hlcn", "--filter_size", "4"], "--filter_size 4: the hlcn's filters .* s = 2"),
    (["--depth", "2"], "--depth 2: the hcnn has one layer per level of its 8 input tokens, depth = 3 \\(the"),
    (["--model", "hlcn", "--depth", "2"], "--depth 2: the hlcn has one layer per level of its 8 input tokens"),
    (["--batch_size", "24"], "--batch_size 24 must divide --train_size 64"),
    (["--save_freq", "0"], "--save_freq must be >= 1"),
])
def test_flags_rhmfast_refuses_say_what_to_use(tmp_path, capsys, extra, message):
    argv = ["train", *LIBRARY_RUN, *extra, "--out", str(tmp_path / "store")]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "store").exists()


def test_the_masked_transformer_command_line_trains_the_library_task(tmp_path, monkeypatch):
    """--mode masked --num_tokens 4 --model transformer_mla: rhmfast's AttentionOnly learns the last token from
    the library's training set, the 3 tokens before it visible (the library's crop to the last 4, hidden last)."""
    import rhmfast.train
    from rhmfast.models import AttentionOnly

    seen = []
    train_sgd = rhmfast.train.train_sgd

    def spy(model, data, P, **kwargs):
        seen.append((model, data, P, kwargs))
        return train_sgd(model, data, P, **kwargs)

    monkeypatch.setattr(rhmfast.train, "train_sgd", spy)
    cli.main(["train", *MLA_COMMAND.split(), "--out", str(tmp_path / "store")])
    ((model, data, P, kwargs),) = seen
    assert isinstance(model, AttentionOnly) and (model.d, model.n_classes, model.embedding_dim, model.heads,
                                                 model.layers) == (8, 8, 16, 2, 2)
    assert (data.task, data.context, P, kwargs["order"], kwargs["seed_data"], kwargs["max_epochs"]) == (
        "last-token", 4, 64, "pcsl", 3, 6)
    (x_train, y_train), (x_test, y_test) = data.split(64, 32, seed=3, order="pcsl")
    g = RHM(8, 2, 2, 3, seed=1)
    state = random.getstate()
    random.seed(3)  # the library's draw, then its crop to the last num_tokens and its hidden last token
    x, _ = g.decode(random.sample(range(g.pmax), 64 + 32))
    random.setstate(state)
    x_in = torch.cat([x_train, x_test]).long()
    assert torch.equal(torch.cat([y_train, y_test]), x[:, -1].long())
    assert torch.equal(x_in[:, 4:7], x[:, 4:7].long())
    assert bool((x_in[:, :4] == data.mask_id).all()) and bool((x_in[:, 7] == data.mask_id).all())
    (record,) = ResultStore(tmp_path / "store").records()
    c = record["config"]
    assert (c["model"], c["task"], c["context"], c["width"], c["heads"], c["depth"]) == ("mla", "last-token", 4, 16,
                                                                                          2, 2)
    curve = record["result"]["curve"]
    assert [p["epoch"] for p in curve] == [0, 2, 4, 6] and curve[-1]["train_loss"] < curve[0]["train_loss"]


def test_the_masked_command_line_runs_as_it_is(tmp_path):
    """The library's command line with --mode masked, as a process: exit 0, one record of the masked task."""
    command = ("--device cpu --dataset rhm --mode masked --num_features 8 --num_classes 8 --num_synonyms 2 "
               "--tuple_size 2 --num_layers 3 --seed_rules 1 --num_tokens 4 --train_size 64 --batch_size 16 "
               "--test_size 32 --seed_sample 3 --input_format onehot --model hcnn --depth 2 --width 8 --filter_size 2 "
               "--seed_model 4 --lr 0.1 --max_epochs 3")
    proc = subprocess.run([sys.executable, "-m", "rhmfast", "train", *command.split(), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (record,) = ResultStore(tmp_path).records()
    c = record["config"]
    assert (c["model"], c["task"], c["context"], c["width"], c["max_epochs"], c["order"]) == (
        "hcnn", "last-token", 4, 8, 3, "pcsl")
    assert record["result"]["curve"][-1]["epoch"] == 3


def test_outname_is_rewritten_at_the_save_checkpoints_and_at_the_stop(tmp_path, monkeypatch):
    writes = []
    write = reference_cli.OutnameWriter.write

    def spy(self, epoch):
        write(self, epoch)
        writes.append((epoch, [d["t"] for d in load_outname(self.path)[1]["dynamics"]]))

    monkeypatch.setattr(reference_cli.OutnameWriter, "write", spy)
    base = ["train", "--num_features", "8", "--num_synonyms", "2", "--num_layers", "3", "--train_size", "32",
            "--batch_size", "8", "--test_size", "16", "--width", "8", "--out", str(tmp_path / "store")]
    cli.main([*base, "--max_epochs", "9", "--print_freq", "2", "--save_freq", "4", "--outname", str(tmp_path / "a")])
    # print checkpoints 2, 4, 6, 8; saves at 4 and 8 (where they meet one), then the stop (epoch 9)
    assert writes == [(4, [0, 2, 4]), (8, [0, 2, 4, 6, 8]), (9, [0, 2, 4, 6, 8])]
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]  # atomic: no temporary left
    writes.clear()
    # the loss threshold is checked at the print checkpoints only (the library's rule): a threshold every
    # epoch meets stops the run at the first print checkpoint, 3
    cli.main([*base, "--max_epochs", "9", "--print_freq", "3", "--loss_threshold", "100", "--outname",
              str(tmp_path / "b")])
    args, output = load_outname(tmp_path / "b")
    assert output["epoch"] == 3 and [d["t"] for d in output["dynamics"]] == [0, 3] and writes[-1][0] == 3
    # --stop_check epoch: after the first epoch, whose entry the stop adds
    cli.main([*base, "--max_epochs", "9", "--print_freq", "3", "--loss_threshold", "100", "--stop_check", "epoch",
              "--outname", str(tmp_path / "c")])
    _, output = load_outname(tmp_path / "c")
    assert output["epoch"] == 1 and [d["t"] for d in output["dynamics"]] == [0, 1]


def test_sweep_takes_the_library_spellings_of_grid_keys(tmp_path, capsys):
    cli.main(["sweep", "--num_features", "8", "--num_synonyms", "2,3", "--tuple_size", "2", "--num_layers", "2",
              "--train_size", "32", "--test_size", "16", "--batch_size", "8", "--optim", "adam", "--bias",
              "--dry-run", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "2 runs" and "v=8 m=2 s=2 L=2" in out and "v=8 m=3 s=2 L=2" in out


def readme_commands() -> tuple[list[str], list[str]]:
    """The README's 'Coming from random-hierarchy-model' example: the library's command and rhmfast's."""
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    with open(readme) as f:
        text = f.read()
    section = text.split("## Coming from random-hierarchy-model", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    library, ours = [line.split() for line in block.splitlines() if line.strip()]
    return library, ours


def test_the_readme_example_runs_the_library_command_line_as_it_is(tmp_path):
    library, ours = readme_commands()
    assert library[:2] == ["python", "main.py"] and ours[:2] == ["rhmfast", "train"]
    assert library[2:] == ours[2:]  # the same flags
    assert {flag for flag in ours if flag.startswith("--")} <= set(main_py_flags())
    flags = ours[2:]
    flags[flags.index("--device") + 1] = "cpu"  # the only change: no GPU here
    flags[flags.index("--outname") + 1] = str(tmp_path / "run.pkl")
    proc = subprocess.run([sys.executable, "-m", "rhmfast", "train", *flags, "--out", str(tmp_path / "store")],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    args, output = load_outname(tmp_path / "run.pkl")
    assert args.train_size == 512 and args.max_epochs == 100 and args.lr == pytest.approx(6.4)
    assert output["dynamics"][-1]["t"] == output["epoch"] and output["dynamics"][-1]["testacc"] > 0.9
