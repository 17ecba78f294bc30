"""Engines that execute the runs of a sweep: a local process pool, or Ray core tasks.

Both take complete run configs and hand every finished run's record to ``on_result`` in the calling
process, which stores it: one writer, so a store never sees two half-written copies, and a Ray cluster
needs no shared file system. With ``pack`` > 1 (or None, the default size) compatible runs (``runs.pack_key``)
train together as one replica-batched model (``runs.run_pack``), and each run's record is handed on as soon
as that run ends. A worker process that dies (a crash, SIGKILL, the out-of-memory killer) costs only the
runs it had not finished: they are retried up to ``retries`` times. A Python exception inside a run is
deterministic (the same config fails the same way), so it is reported, not retried.

Ctrl-C (SIGINT to the whole process group) is the calling process's alone: local workers ignore SIGINT
from their first instruction on; the caller stores the results already sent, stops the workers (SIGTERM,
which ends a worker like an exception, running its exit handlers) and lets the KeyboardInterrupt go on.
"""
from __future__ import annotations

import collections
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import threading
import time
import traceback
from multiprocessing import resource_tracker


def execute(config: dict, threads: int = 1, engine: str = "local", device: str = "cpu", *,
            checkpoint_dir: str | None = None, checkpoint_every: int = 0) -> dict:
    """Run one config in this process and return the record to store. With checkpoint_dir and
    checkpoint_every > 0, an end-to-end SGD run saves its state every checkpoint_every epochs to
    checkpoint_dir/<hash>.ckpt and resumes from it when it is there (a run whose worker or sweep was
    killed); the sweep removes it once the record is stored."""
    import torch

    from rhmfast.studies.runs import complete_config, config_hash, run_config
    from rhmfast.studies.store import make_record

    torch.set_num_threads(threads)
    checkpoint = None
    if checkpoint_dir is not None and checkpoint_every > 0 and complete_config(config)["trainer"] == "sgd":
        checkpoint = os.path.join(checkpoint_dir, f"{config_hash(config)}.ckpt")
    record = run_config(config, device=device, checkpoint=checkpoint, checkpoint_every=checkpoint_every)
    if record.interrupted:
        raise KeyboardInterrupt
    return make_record(config, record, execution=dict(engine=engine, pid=os.getpid(), threads=threads, device=device))


def execute_pack(configs: list[dict], threads: int = 1, engine: str = "local", device: str = "cpu",
                 emit=None) -> list[dict]:
    """Run configs that share a pack_key as one replica-batched training in this process; emit(i, record)
    hands each run's record on as soon as that run has ended (a killed pack loses only the runs still
    training). Returns the records in order; Ctrl-C raises KeyboardInterrupt once the finished ones are out."""
    import torch

    from rhmfast.studies.runs import run_pack
    from rhmfast.studies.store import make_record

    torch.set_num_threads(threads)
    out = [None] * len(configs)
    execution = dict(engine=engine, pid=os.getpid(), threads=threads, device=device, pack=len(configs))

    def on_stop(i, record):
        if not record.interrupted:
            out[i] = make_record(configs[i], record, execution=execution)
            if emit is not None:
                emit(i, out[i])

    records = run_pack(configs, device=device, on_stop=on_stop)
    if any(record.interrupted for record in records):
        raise KeyboardInterrupt
    return out


# The most runs one pack holds by default: on a CPU the per-replica step cost stops falling near K = 8 (see
# benchmarks/results/replicas_*.md); a GPU runs many small models for about the price of one.
DEFAULT_PACK = {"cpu": 8, "cuda": 64}


def default_pack(device: str, runs: int, workers: int) -> int:
    """The pack size `--pack` defaults to for a sweep of `runs` packable runs: about two packs per worker
    (ceil(runs / (2 workers))), so that the pool can still balance packs that end at different times, and at
    most DEFAULT_PACK of the device."""
    cap = DEFAULT_PACK["cuda" if str(device).startswith("cuda") else "cpu"]
    return max(1, min(cap, -(-runs // (2 * max(1, workers)))))


def plan_tasks(configs: list[dict], pack: int | None, workers: int = 1, device: str = "cpu") -> list[list[int]]:
    """The configs (by index) grouped into tasks: runs with one pack_key in packs of up to `pack` runs (None:
    default_pack of all the packable runs), consecutive in P so that a pack's minibatches have similar sizes; every other run
    (and every run with pack=1) a task of its own. The tasks come largest P first: a run's length grows with
    its P, so the longest tasks start first and the pool's last tasks are short ones."""
    from rhmfast.studies.runs import pack_key

    groups = collections.OrderedDict()
    for i, config in enumerate(configs):
        key = pack_key(config) if pack != 1 else None
        groups.setdefault(i if key is None else key, []).append(i)
    packable = sum(len(members) for key, members in groups.items() if isinstance(key, str))
    size = pack if pack is not None else default_pack(device, packable, workers)
    tasks = []
    for members in groups.values():
        members = sorted(members, key=lambda i: (configs[i]["P"], i))
        count = -(-len(members) // size)  # packs as even as possible: 21 runs in packs of <= 8 are 7, 7, 7
        for j in range(count):
            tasks.append(members[j * len(members) // count:(j + 1) * len(members) // count])
    return sorted(tasks, key=lambda task: -max(configs[i]["P"] for i in task))  # stable: ties keep their order


def _run_task(configs: list[dict], threads: int, engine: str, device: str, run, run_pack, emit) -> None:
    """One task in a worker: a single config through run(), a pack through run_pack (execute_pack's
    signature); emit(j, status, payload) for each of its configs ("ok" and the record, or "error" and the
    traceback)."""
    if len(configs) == 1:
        try:
            emit(0, "ok", run(configs[0], threads, engine, device))
        except Exception:  # deterministic failure of the run itself: reported, not retried
            emit(0, "error", traceback.format_exc())
        return
    sent = set()

    def ok(j, record):
        sent.add(j)
        emit(j, "ok", record)

    try:
        run_pack(configs, threads, engine, device, emit=ok)
    except Exception:
        error = traceback.format_exc()
        for j in range(len(configs)):
            if j not in sent:
                emit(j, "error", error)


def _exit_with_parent(parent: int) -> None:
    """A worker whose sweep process was killed stops too, instead of finishing a run nobody stores."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough: a second must not interrupt the unwinding
    raise SystemExit(128 + signum)  # unwinds the run: exit handlers run (no leaked semaphores), no traceback


def _worker_main(conn, threads: int, device: str, run, run_pack) -> None:
    # Ctrl-C is for the sweep process, which stops the pool; SIGINT was blocked since the fork (see _start)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGTERM, _terminated)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    while True:
        try:
            task = conn.recv()  # a list of configs: one run, or a pack
        except EOFError:
            task = None
        if task is None:  # done: a SIGTERM now (a Ctrl-C of the sweep) must not interrupt the exit handlers
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            return
        _run_task(task, threads, "local", device, run, run_pack, lambda *item: conn.send(item))
        conn.send((None, "done", None))


class LocalEngine:
    """A pool of ``workers`` spawned processes with ``threads`` torch threads each. Workers live for the
    whole sweep and take one task after another (start-up and imports are paid once per worker). A task is
    one run, or a pack of runs trained as one replica-batched model (``pack``: up to that many compatible
    runs per task, 1: every run alone, None: ``default_pack``); each run's record comes back as soon as that
    run ends."""

    name = "local"

    def __init__(self, workers: int | None = None, threads: int = 1, retries: int = 2, run=execute,
                 device: str = "cpu", pack: int | None = 1, run_pack=execute_pack):
        self.threads, self.device, self.pack, self.run_pack = threads, device, pack, run_pack
        self.workers = workers or max(1, (os.cpu_count() or 1) // threads)
        self.retries, self.run = retries, run
        self._context = multiprocessing.get_context("spawn")  # no forked torch thread pools

    def _start(self) -> tuple:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_worker_main, daemon=True,
                                        args=(child, self.threads, self.device, self.run, self.run_pack))
        # The child inherits the blocked SIGINT through fork and exec, so a Ctrl-C while it imports does
        # not raise there; here a pending SIGINT is delivered when the mask is restored. The resource
        # tracker is started first: starting it unblocks SIGINT in this thread.
        resource_tracker.ensure_running()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        child.close()
        return parent, process

    def map(self, configs: list[dict], on_result, on_failure) -> None:
        # A task is a list of config indices; the runs of a task not yet reported are what a dead worker loses.
        pending = collections.deque(plan_tasks(configs, self.pack, self.workers, self.device))
        attempts = collections.Counter()
        busy = {}  # connection -> (process, task: list of config indices not yet reported, or None)

        def report(task, j, status, payload):
            index = task[j]
            (on_result if status == "ok" else on_failure)(configs[index], payload)

        try:
            for _ in range(min(self.workers, len(pending))):
                conn, process = self._start()
                busy[conn] = (process, None)
            while busy:
                for conn, (process, task) in list(busy.items()):
                    if task is None:
                        if pending:
                            task = pending.popleft()
                            conn.send([configs[i] for i in task])
                            busy[conn] = (process, dict(indices=task, left=set(range(len(task)))))
                        else:
                            conn.send(None)
                            process.join()
                            del busy[conn]
                if not busy:
                    break
                sentinels = {process.sentinel: conn for conn, (process, _) in busy.items()}
                for ready in multiprocessing.connection.wait(list(busy) + list(sentinels)):
                    conn = sentinels.get(ready, ready)
                    if conn not in busy:
                        continue
                    process, task = busy[conn]
                    try:
                        j, status, payload = conn.recv()
                    except (EOFError, OSError):  # the worker died, maybe mid-task
                        del busy[conn]
                        process.join()
                        if task is not None and task["left"]:
                            left = [task["indices"][j] for j in sorted(task["left"])]
                            attempts.update(left)
                            retry = [i for i in left if attempts[i] <= self.retries]
                            if retry:
                                pending.appendleft(retry)
                            for i in left:
                                if attempts[i] > self.retries:
                                    on_failure(configs[i], f"worker died {attempts[i]} times (exit code "
                                                           f"{process.exitcode})")
                        if pending:
                            new_conn, new_process = self._start()
                            busy[new_conn] = (new_process, None)
                        continue
                    if status == "done":
                        busy[conn] = (process, None)
                        continue
                    task["left"].discard(j)
                    report(task["indices"], j, status, payload)
        except KeyboardInterrupt:
            with _sigint_ignored():  # a second Ctrl-C must not cut the shutdown short
                for conn, (process, task) in list(busy.items()):
                    with contextlib.suppress(EOFError, OSError):
                        while task is not None and conn.poll():  # finished before the Ctrl-C: keep them
                            j, status, payload = conn.recv()
                            if status == "done":
                                break
                            task["left"].discard(j)
                            report(task["indices"], j, status, payload)
                self._stop(busy)
            raise
        finally:
            self._stop(busy)

    @staticmethod
    def _stop(busy: dict, grace: float = 10.0) -> None:
        """End every worker still in busy: SIGTERM (a clean exit), SIGKILL after grace seconds."""
        for conn, (process, _) in busy.items():
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + grace
        for conn, (process, _) in busy.items():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()
        busy.clear()


@contextlib.contextmanager
def _sigint_ignored():
    """Ignore SIGINT in the body (only the main thread may change it; elsewhere nothing changes)."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stream_task(configs: list[dict], threads: int, device: str, run, run_pack):
    """A Ray streaming task: (j, status, payload) for each run of the task, yielded as soon as it ends."""
    results = queue.SimpleQueue()

    def work():
        try:
            _run_task(configs, threads, "ray", device, run, run_pack, lambda *item: results.put(item))
        finally:
            results.put(None)

    threading.Thread(target=work, daemon=True).start()
    while (item := results.get()) is not None:
        yield item


class RayEngine:
    """Ray core tasks, one per run or per pack (``pack`` as LocalEngine's), each streaming its runs' records
    back as they end; a task whose worker dies is submitted again with the runs it had not finished, up to
    ``retries`` times. ``address`` joins a running cluster (``"auto"`` or host:port); without it a local Ray
    starts with ``workers * threads`` CPUs. ``gpus`` per task may be fractional, so several small tasks share
    a GPU; runs then train on "cuda"."""

    name = "ray"

    def __init__(self, workers: int | None = None, threads: int = 1, retries: int = 2, run=execute,
                 address: str | None = None, gpus: float = 0.0, device: str | None = None, pack: int | None = 1,
                 run_pack=execute_pack):
        try:
            import ray
        except ImportError:
            raise RuntimeError("rhmfast: --engine ray needs Ray: pip install 'rhmfast[ray]'") from None
        self.ray = ray
        self.threads, self.retries, self.run, self.gpus, self.pack = threads, retries, run, gpus, pack
        self.run_pack = run_pack
        self.device = device or ("cuda" if gpus > 0 else "cpu")
        self.workers = workers or max(1, (os.cpu_count() or 1) // threads)
        if not ray.is_initialized():
            cpus = None if address else self.workers * threads
            ray.init(address=address, num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR", configure_logging=False)

    def map(self, configs: list[dict], on_result, on_failure) -> None:
        ray = self.ray
        remote = ray.remote(_stream_task).options(num_cpus=self.threads, num_gpus=self.gpus, max_retries=0,
                                                  num_returns="streaming")
        attempts = collections.Counter()
        running = {}  # generator -> (task: config indices, indices not yet reported)

        def submit(task):
            generator = remote.remote([configs[i] for i in task], self.threads, self.device, self.run, self.run_pack)
            running[generator] = (task, set(task))

        for task in plan_tasks(configs, self.pack, self.workers, self.device):
            submit(task)
        try:
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                generator = ready[0]
                task, left = running[generator]
                try:
                    j, status, payload = ray.get(next(generator))
                except StopIteration:
                    del running[generator]
                    continue
                except ray.exceptions.RayError as error:  # the worker died: its unfinished runs go again
                    del running[generator]
                    lost = sorted(left)
                    attempts.update(lost)
                    retry = [i for i in lost if attempts[i] <= self.retries]
                    if retry:
                        submit(retry)
                    for i in lost:
                        if attempts[i] > self.retries:
                            on_failure(configs[i], f"worker died {attempts[i]} times: {type(error).__name__}")
                    continue
                left.discard(task[j])
                (on_result if status == "ok" else on_failure)(configs[task[j]], payload)
        finally:
            for generator in running:
                with contextlib.suppress(Exception):
                    ray.cancel(generator, force=True)


ENGINES = {"local": LocalEngine, "ray": RayEngine}
