"""Engines that execute the runs of a sweep: a local process pool, or Ray core tasks.

Both take complete run configs and hand every finished run's record to ``on_result`` in the calling
process, which stores it: one writer, so a store never sees two half-written copies, and a Ray cluster
needs no shared file system. A run whose worker process dies (a crash, SIGKILL, the out-of-memory
killer) costs only that run: it is retried up to ``retries`` times. A Python exception inside a run is
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


def _exit_with_parent(parent: int) -> None:
    """A worker whose sweep process was killed stops too, instead of finishing a run nobody stores."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # unwinds the run: exit handlers run (no leaked semaphores), no traceback


def _worker_main(conn, threads: int, device: str, run) -> None:
    # Ctrl-C is for the sweep process, which stops the pool; SIGINT was blocked since the fork (see _start)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGTERM, _terminated)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        index, config = task
        try:
            outcome = ("ok", run(config, threads, "local", device))
        except Exception:  # deterministic failure of the run itself: reported, not retried
            outcome = ("error", traceback.format_exc())
        conn.send((index, *outcome))


class LocalEngine:
    """A pool of ``workers`` spawned processes with ``threads`` torch threads each. Workers live for the
    whole sweep and take one run after another (start-up and imports are paid once per worker)."""

    name = "local"

    def __init__(self, workers: int | None = None, threads: int = 1, retries: int = 2, run=execute,
                 device: str = "cpu"):
        self.threads, self.device = threads, device
        self.workers = workers or max(1, (os.cpu_count() or 1) // threads)
        self.retries, self.run = retries, run
        self._context = multiprocessing.get_context("spawn")  # no forked torch thread pools

    def _start(self) -> tuple:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_worker_main, args=(child, self.threads, self.device, self.run),
                                              daemon=True)
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
        pending = collections.deque(enumerate(configs))
        attempts = collections.Counter()
        busy = {}  # connection -> (process, (index, config) or None)
        try:
            for _ in range(min(self.workers, len(configs))):
                conn, process = self._start()
                busy[conn] = (process, None)
            while busy:
                for conn, (process, task) in list(busy.items()):
                    if task is None:
                        if pending:
                            task = pending.popleft()
                            conn.send(task)
                            busy[conn] = (process, task)
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
                        index, status, payload = conn.recv()
                    except (EOFError, OSError):  # the worker died, maybe mid-run
                        del busy[conn]
                        process.join()
                        if task is not None:
                            index, config = task
                            attempts[index] += 1
                            if attempts[index] <= self.retries:
                                pending.appendleft(task)
                            else:
                                on_failure(config, f"worker died {attempts[index]} times (exit code "
                                                   f"{process.exitcode})")
                        if pending:
                            new_conn, new_process = self._start()
                            busy[new_conn] = (new_process, None)
                        continue
                    busy[conn] = (process, None)
                    if status == "ok":
                        on_result(task[1], payload)
                    else:
                        on_failure(task[1], payload)
        except KeyboardInterrupt:
            with _sigint_ignored():  # a second Ctrl-C must not cut the shutdown short
                for conn, (process, task) in list(busy.items()):
                    with contextlib.suppress(EOFError, OSError):
                        if task is not None and conn.poll():  # finished before the Ctrl-C: keep it
                            index, status, payload = conn.recv()
                            busy[conn] = (process, None)
                            (on_result if status == "ok" else on_failure)(task[1], payload)
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


class RayEngine:
    """Ray core tasks, one per run, retried by Ray when their worker dies. ``address`` joins a running
    cluster (``"auto"`` or host:port); without it a local Ray starts with ``workers * threads`` CPUs.
    ``gpus`` per run may be fractional, so several small runs share a GPU; runs then train on "cuda"."""

    name = "ray"

    def __init__(self, workers: int | None = None, threads: int = 1, retries: int = 2, run=execute,
                 address: str | None = None, gpus: float = 0.0, device: str | None = None):
        try:
            import ray
        except ImportError:
            raise RuntimeError("rhmfast: --engine ray needs Ray: pip install 'rhmfast[ray]'") from None
        self.ray = ray
        self.threads, self.retries, self.run, self.gpus = threads, retries, run, gpus
        self.device = device or ("cuda" if gpus > 0 else "cpu")
        if not ray.is_initialized():
            cpus = None if address else (workers or max(1, (os.cpu_count() or 1) // threads)) * threads
            ray.init(address=address, num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR", configure_logging=False)

    def map(self, configs: list[dict], on_result, on_failure) -> None:
        ray = self.ray
        task = ray.remote(self.run).options(num_cpus=self.threads, num_gpus=self.gpus, max_retries=self.retries,
                                            retry_exceptions=False)
        running = {task.remote(config, self.threads, "ray", self.device): config for config in configs}
        try:
            while running:
                (done,), _ = ray.wait(list(running), num_returns=1)
                config = running.pop(done)
                try:
                    on_result(config, ray.get(done))
                except ray.exceptions.RayTaskError as error:
                    on_failure(config, str(error))
                except (ray.exceptions.WorkerCrashedError, ray.exceptions.RayError) as error:
                    on_failure(config, f"worker died {self.retries + 1} times: {type(error).__name__}")
        finally:
            for ref in running:
                ray.cancel(ref, force=True)


ENGINES = {"local": LocalEngine, "ray": RayEngine}
