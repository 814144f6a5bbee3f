"""An ordered map over worker processes that can be killed: a per-task time bound that holds.

    from data_prep.pool import KillablePool, TaskFailed
    with KillablePool(process_item, workers=2, timeout_s=60, args=(cfg, faults)) as pool:
        for task, result in pool.map(items):        # in the order of `items`
            if isinstance(result, TaskFailed): print(result.reason)

A ProcessPoolExecutor cannot stop one stuck task (a decoder spinning in native code ignores
signals and never returns), so here each worker is a process with a pipe of its own. A task that
runs past `timeout_s` has its worker SIGKILLed and replaced and comes back as
TaskFailed("timeout after 60s"); a worker that dies (segfault, OOM kill) gives
TaskFailed("worker died (signal 11)"); an exception in the function gives TaskFailed("error: ...").
Results come back in submission order, so what a caller builds from them does not depend on the
number of workers. At most `ahead` tasks are in flight or waiting to be yielded.

Workers start from a forkserver (cheap to replace, and safe when the parent has threads), and
a task's clock starts only once its worker is up and has imported `fn`'s module and the `preload`
modules (e.g. the storage backend the run's URLs need: pipeline.storage.backend_modules); the
forkserver imports them too when this is the process's first pool, so each worker need not.
A worker runs with the environment its pool's process has when the worker starts (credentials,
endpoints set since), not the forkserver's, which was fixed when the first pool started it.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_END = object()
_READY = "ready"
START_TIMEOUT_S = 120.0


@dataclass
class TaskFailed:
    reason: str


def _worker_main(conn: Connection, fn: Callable, args: tuple, preload: tuple[str, ...], env: dict[str, str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent to handle
    os.environ.clear()  # the forkserver's environment is the one of the first pool: use this pool's
    os.environ.update(env)
    for module in preload:
        importlib.import_module(module)
    conn.send(_READY)  # fn's module is imported by now, so no task's time bound pays for imports
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            result = fn(task, *args)
        except Exception as e:  # any bug in one task must not take the whole run down
            result = TaskFailed(f"error: {e.__class__.__name__}: {' '.join(str(e).split())}")
        try:
            conn.send(result)
        except OSError:
            return


class InOrder:
    """The bookkeeping of an ordered map: tasks numbered as they are taken from `tasks`, and
    (task, result) pairs handed out in that order as `results[number]` fill in."""

    def __init__(self, tasks: Iterable[T]):
        self._source = iter(tasks)
        self._tasks: dict[int, T] = {}
        self.results: dict[int, Any] = {}
        self.taken = self.given = 0
        self.exhausted = False

    @property
    def outstanding(self) -> int:
        """Tasks taken and not yet handed out (running, or done and waiting for an earlier one)."""
        return self.taken - self.given

    def take(self) -> tuple[int, T] | None:
        """(number, task) of the next task, or None once there are no more."""
        task = next(self._source, _END)
        if task is _END:
            self.exhausted = True
            return None
        self._tasks[self.taken] = task
        self.taken += 1
        return self.taken - 1, task

    def ready(self) -> Iterator[tuple[T, Any]]:
        """The pairs whose turn it is."""
        while self.given in self.results:
            yield self._tasks.pop(self.given), self.results.pop(self.given)
            self.given += 1


class _Worker:
    def __init__(self, ctx: Any, fn: Callable, args: tuple, preload: tuple[str, ...]):
        self.conn, child = ctx.Pipe(duplex=True)
        env = dict(os.environ)
        self.process = ctx.Process(target=_worker_main, args=(child, fn, args, preload, env), daemon=True)
        self.process.start()
        child.close()
        self.seq = -1
        self.started = 0.0

    def wait_ready(self) -> None:
        """Block until the worker has started; RuntimeError if it cannot."""
        try:
            if self.conn.poll(START_TIMEOUT_S) and self.conn.recv() == _READY:
                return
        except (EOFError, OSError):
            raise RuntimeError(f"a pool worker failed to start: {self.death()}") from None
        self.kill()
        raise RuntimeError(f"a pool worker did not start within {START_TIMEOUT_S:g}s")

    def submit(self, seq: int, task: Any) -> None:
        self.seq, self.started = seq, time.monotonic()
        self.conn.send(task)

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()

    def death(self) -> str:
        self.process.join(timeout=5)
        code = self.process.exitcode
        self.conn.close()
        return f"worker died (signal {-code})" if code and code < 0 else f"worker died (exit code {code})"


class KillablePool:
    def __init__(self, fn: Callable, workers: int, timeout_s: float, args: tuple = (), preload: tuple[str, ...] = ()):
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload([fn.__module__, *preload])
        self._fn, self._args, self._timeout, self._preload = fn, args, timeout_s, tuple(preload)
        self._workers = [_Worker(self._ctx, fn, args, self._preload) for _ in range(workers)]
        try:
            for worker in self._workers:
                worker.wait_ready()
        except BaseException:
            self.close()
            raise

    def _replace(self, worker: _Worker) -> _Worker:
        fresh = _Worker(self._ctx, self._fn, self._args, self._preload)
        self._workers[self._workers.index(worker)] = fresh
        fresh.wait_ready()
        return fresh

    def _submit(self, worker: _Worker, seq: int, task: Any, results: dict[int, Any]) -> _Worker:
        """Hand `task` to `worker`, or to one fresh replacement if that worker died while idle.

        Returns the worker now running the task, or (if the replacement died too) an idle
        worker, with the task's result recorded as a TaskFailed.
        """
        for _ in range(2):
            try:
                worker.submit(seq, task)
                return worker
            except OSError:
                reason = worker.death()
                worker = self._replace(worker)
        results[seq] = TaskFailed(reason)
        return worker

    def map(self, tasks: Iterable[T], ahead: int = 0) -> Iterator[tuple[T, Any]]:
        """(task, result) pairs in task order; result is fn(task, *args) or a TaskFailed."""
        order = InOrder(tasks)
        ahead = ahead or 4 * len(self._workers)
        idle = list(self._workers)
        busy: dict[Connection, _Worker] = {}
        while True:
            while idle and order.outstanding < ahead and (taken := order.take()) is not None:
                worker = self._submit(idle.pop(), *taken, order.results)
                if worker.seq == taken[0]:
                    busy[worker.conn] = worker
                else:
                    idle.append(worker)
            yield from order.ready()
            if not busy:
                if order.exhausted:
                    return
                continue
            deadline = min(w.started for w in busy.values()) + self._timeout
            for conn in wait(list(busy), timeout=max(0.0, deadline - time.monotonic())):
                worker = busy.pop(conn)
                try:
                    order.results[worker.seq] = conn.recv()
                    idle.append(worker)
                except (EOFError, OSError):
                    order.results[worker.seq] = TaskFailed(worker.death())
                    idle.append(self._replace(worker))
            now = time.monotonic()
            for conn, worker in list(busy.items()):
                if now - worker.started >= self._timeout:
                    del busy[conn]
                    worker.kill()
                    order.results[worker.seq] = TaskFailed(f"timeout after {self._timeout:g}s")
                    idle.append(self._replace(worker))

    def close(self) -> None:
        """Stop every worker: ask idle ones to exit, kill any that do not within a second."""
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        end = time.monotonic() + 1.0
        for worker in self._workers:
            worker.process.join(timeout=max(0.0, end - time.monotonic()))
            if worker.process.is_alive():
                worker.kill()
            worker.conn.close()

    def __enter__(self) -> "KillablePool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
