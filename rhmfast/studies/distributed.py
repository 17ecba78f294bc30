"""Data-parallel end-to-end SGD over ``torch.distributed``: one large ``train_sgd`` run on several processes.

- ``train_sgd_distributed``: ``rhmfast.train.train_sgd`` with the work of every minibatch split across the
  ranks of an initialised process group (gloo on CPU, NCCL on GPU). Its result equals the single-process
  run with the same arguments up to the order of float additions.
- ``init_from_env`` / ``shutdown``: the process group from the variables torchrun sets, and its end.
- ``launch_torchrun`` / ``torchrun_command``: run ``python -m rhmfast ...`` in N processes under torchrun.

No data is loaded or sent: sample i of an RHM stream depends only on (grammar, seed, mode, i), so each
rank generates just its own contiguous part of the training set, of the test set and, online, of every
fresh minibatch. Every epoch each rank draws the same permutation as train_sgd; of each global minibatch
it processes the members in its part (possibly none), and one all-reduce per step sums the gradients,
the loss and the sample count (with a stop flag), so the step is the single-process mean-gradient step.
"""
from __future__ import annotations

import functools
import inspect
import itertools
import math
import os
import signal
import subprocess
import sys
import threading

import torch
import torch.distributed as dist
import torch.nn.functional as F

from rhmfast.data.grammar import shard_range
from rhmfast.models import device_of
from rhmfast.train import RunRecord, train_sgd
from rhmfast.train.loop import evaluate_set
from rhmfast.train.end_to_end import bayes_error_of, run_sgd, sgd_record
from rhmfast.train.loop import minibatches

_TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _require_process_group() -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("rhmfast: train_sgd_distributed must run inside an initialised torch.distributed "
                           "process group: start the processes with torchrun (rhmfast.studies.distributed.launch_torchrun) "
                           "and call rhmfast.studies.distributed.init_from_env() in each")
    return dist.get_rank(), dist.get_world_size()


def _flatten(tensors, dtype) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors])


def _unflatten_into(flat: torch.Tensor, tensors) -> None:
    """Copies consecutive pieces of flat back into tensors (any strides, any dtype)."""
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view(t.shape))
        offset += t.numel()


@torch.no_grad()
def _broadcast_from_rank0(tensors) -> None:
    """One broadcast per dtype (parameters and buffers usually share one)."""
    for dtype in dict.fromkeys(t.dtype for t in tensors):
        group = [t for t in tensors if t.dtype == dtype]
        flat = _flatten(group, dtype)
        dist.broadcast(flat, 0)
        _unflatten_into(flat, group)


class _Replicas:
    """What keeps the ranks in step: the per-step all-reduce and a stop flag that every rank obeys together.

    Ctrl-C (SIGINT, which torchrun passes on to every worker) and a KeyboardInterrupt from the rank-0
    callback only set the flag; the next step's all-reduce carries it, and every rank then raises
    KeyboardInterrupt before the same optimizer step, so the ranks end the run and evaluate together. A
    second Ctrl-C raises at once, as without this handling."""

    def __init__(self, params, device):
        self.params = [p for p in params if p.requires_grad]
        # One buffer in one dtype: at least float32, so low-precision gradients are summed in float32.
        self.dtype = functools.reduce(torch.promote_types, (p.dtype for p in self.params), torch.float32)
        self.device = device
        self.stop_requested = False

    def combine(self, loss_sum, inputs):
        """After backward of this rank's summed loss: the ranks' gradients, losses and sample counts are
        summed in one all-reduce, and the gradients divided by the minibatch size. Returns the minibatch's
        mean loss and size (``run_epochs``' combine)."""
        for p in self.params:
            if p.grad is None:  # a rank with no member of this minibatch, or a parameter the loss skips
                p.grad = torch.zeros_like(p)
        extras = torch.tensor([inputs.shape[0], float(self.stop_requested)], dtype=self.dtype, device=self.device)
        flat = torch.cat([_flatten([p.grad for p in self.params], self.dtype),
                          loss_sum.detach().reshape(1).to(self.dtype), extras])
        dist.all_reduce(flat)
        loss_total, n, stop = flat[-3:].tolist()
        if stop:
            raise KeyboardInterrupt
        with torch.no_grad():
            _unflatten_into(flat[:-3].div_(n), [p.grad for p in self.params])
        return loss_total / n, int(n)

    def any_stop_requested(self) -> bool:
        flag = torch.tensor([int(self.stop_requested)], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag)
        return flag.item() > 0

    def on_sigint(self, signum, frame):
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True


def train_sgd_distributed(model, grammar, n_train: int, **kwargs) -> RunRecord:
    """``train_sgd`` (same keyword arguments and defaults) with each minibatch's work split across the ranks
    of the initialised process group; call it on every rank with the same arguments and a model built
    the same way (rank 0's parameters are broadcast at the start). The data and the evaluation go to the
    device of the model's parameters: CPU with gloo, the rank's GPU with NCCL.

    Rank r generates only its ``shard_range`` of the training samples [0, n_train) and of the test samples
    that follow them (``grammar.split(..., shard=(r, world_size))``); online, its part of the test set and
    of every fresh minibatch of train_sgd's stream. The loss is the sum of the per-sample cross-entropies
    of the rank's members of the minibatch; after the all-reduce the gradient is divided by the minibatch
    size, which makes the update train_sgd's mean-gradient step up to float rounding. A trainable
    parameter that the loss does not reach gets a zero gradient here (train_sgd's optimizer would skip
    it), which differs only under weight decay.

    Returns the same ``RunRecord`` on every rank (trainer "train_sgd", ``config["world_size"]`` added);
    the progress bar and the callback run on rank 0 only. Ctrl-C ends the run early on all ranks at once
    and returns the partial record with ``interrupted=True``, as train_sgd does.
    """
    rank, world_size = _require_process_group()
    bound = inspect.signature(train_sgd).bind(model, grammar, n_train, **kwargs)
    bound.apply_defaults()
    settings = dict(bound.arguments)
    del settings["model"], settings["grammar"]
    progress, callback = settings.pop("progress"), settings.pop("callback")
    record = sgd_record(model, grammar, **settings)
    record.config["world_size"] = world_size
    n_test, batch_size, seed_data = settings["n_test"], settings["batch_size"], settings["seed_data"]

    device = device_of(model)
    if dist.get_backend() == "nccl" and device.type != "cuda":
        raise RuntimeError("rhmfast: the NCCL backend needs the model on this rank's GPU, got device "
                           f"{device}; on CPU use the gloo backend")
    _broadcast_from_rank0(list(model.parameters()) + list(model.buffers()))
    replicas = _Replicas(model.parameters(), device)

    if settings["online"]:
        # train_sgd's stream seed_data (iid): test set samples [0, n_test), global minibatch k samples
        # n_test + k*batch_size ...; each rank generates its part of both.
        lo, hi = shard_range(n_test, rank, world_size)
        x_test, y_test = grammar.sample(hi - lo, seed=seed_data, start=lo, device=device)
        batch_starts = itertools.count(n_test, batch_size)
        lo, hi = shard_range(batch_size, rank, world_size)

        def batches_of_epoch():
            for _ in range(math.ceil(n_train / batch_size)):
                yield grammar.sample(hi - lo, seed=seed_data, start=next(batch_starts) + lo, device=device)
    else:
        (x_train, y_train), (x_test, y_test) = grammar.split(n_train, n_test, seed=seed_data,
                                                             shard=(rank, world_size), device=device)
        lo, hi = shard_range(n_train, rank, world_size)
        order = torch.Generator().manual_seed(settings["seed_order"])

        def batches_of_epoch():
            for idx in minibatches(n_train, batch_size, order, device):  # the same global order on every rank
                mine = idx[(idx >= lo) & (idx < hi)] - lo
                yield x_train[mine], y_train[mine]

    # The Bayes-optimal error of the whole test set: each rank's mean over its part, weighted by its size.
    n_local = x_test.shape[0]
    bayes = bayes_error_of(grammar, x_test) if n_local else 0.0
    bayes = torch.tensor([bayes * n_local, n_local], dtype=torch.float64, device=device)
    dist.all_reduce(bayes)
    record.bayes_error = (bayes[0] / bayes[1]).item() if bayes[1] > 0 else math.nan

    def loss_sum(x, y):
        if x.shape[0] == 0:  # no member of this minibatch here: a zero loss, still part of the all-reduce
            return torch.zeros((), device=device, requires_grad=True)
        return F.cross_entropy(model(x), y, reduction="sum")

    def evaluate():  # each rank its part of the test set; errors and loss summed over the ranks
        n_local = x_test.shape[0]
        local = evaluate_set(model, x_test, y_test)
        counts = torch.tensor([round(local["error"] * n_local), n_local], dtype=torch.int64, device=device)
        loss = torch.tensor(local["loss"] * n_local if n_local else 0.0, dtype=torch.float64, device=device)
        dist.all_reduce(counts)
        dist.all_reduce(loss)
        wrong, n = counts.tolist()
        return dict(error=wrong / max(1, n), loss=loss.item() / n if n else float("nan"),
                    accuracy=(n - wrong) / max(1, n))

    def rank0_callback(point):
        try:
            callback(point)
        except KeyboardInterrupt:
            replicas.stop_requested = True  # obeyed by every rank at the next step

    main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGINT, replicas.on_sigint) if main_thread else None
    try:
        run_sgd(model, record, batches_of_epoch, loss_sum, evaluate, progress=progress and rank == 0,
                 callback=rank0_callback if rank == 0 and callback is not None else None,
                 combine=replicas.combine)
        if replicas.any_stop_requested() and not record.interrupted:  # asked for after the last step
            record.interrupted, record.stopped_by = True, "interrupted"
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, signal.default_int_handler if previous_handler is None else previous_handler)
    return record


def init_from_env(device="cpu") -> tuple[int, int]:
    """Initialises the default process group from the environment torchrun gives each worker (RANK,
    LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and returns (rank, world_size). Backend: gloo
    for device "cpu"; NCCL for a CUDA device, after making GPU LOCAL_RANK this process's current device
    (so "cuda" means the rank's own GPU). Already initialised: returns the current group's values.
    End the run with ``shutdown()``."""
    device = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    missing = [name for name in _TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(f"rhmfast: init_from_env needs the environment torchrun sets; missing {', '.join(missing)} "
                           "(start with rhmfast.studies.distributed.launch_torchrun or torchrun)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("rhmfast: init_from_env(device='cuda') needs CUDA, which this torch does not see")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"rhmfast: init_from_env supports devices 'cpu' (gloo) and 'cuda' (NCCL), got {device}")
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def shutdown() -> None:
    """Ends the process group on every rank together: a barrier, then ``destroy_process_group``, so that
    no rank tears down its connections while another is still using them."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def torchrun_command(program: list[str], nproc: int) -> list[str]:
    """The command that runs python's arguments ``program`` (a script or ``-m module``, then its own
    arguments) in nproc processes on this machine under torchrun."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"rhmfast: nproc must be an int >= 1, got {nproc!r}")
    # "--" ends torchrun's own options: otherwise it takes a program flag such as --v for an
    # abbreviation of one of its own (--virtual-local-rank).
    module = ["-m"] if program[:1] == ["-m"] else []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            *module, "--", *program[len(module):]]


def launch_torchrun(module_argv: list[str], nproc: int) -> int:
    """Runs ``python -m rhmfast <module_argv>`` in nproc processes under torchrun and returns its exit code.
    Ctrl-C reaches torchrun too, which passes it on to the workers; this waits for them to finish."""
    process = subprocess.Popen(torchrun_command(["-m", "rhmfast", *module_argv], nproc))
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            continue
