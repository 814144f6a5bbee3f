"""`vssl shard --backend ray`: the per-input work on a Ray cluster, with the local pool's guarantees.

    from data_prep.ray_pool import RayPool, ray_session
    with ray_session(address="", cpus=8), RayPool(process_item, 8, timeout_s=60, args=(cfg, faults)) as pool:
        for task, result in pool.map(items):        # in the order of `items`, like KillablePool.map
            ...

At most `workers` Ray tasks run at once (one CPU each, placed by Ray anywhere in the cluster), and
as many more wait in Ray's queue, so a Ray worker that finishes one task starts the next without
waiting for the driver. A task runs fn(task, *args) in a one-worker data_prep.pool
.KillablePool that its Ray worker process keeps between tasks: the time bound, a decoder that
crashes or hangs, and an exception in fn give exactly the TaskFailed the local pool gives (the
same reasons, so quarantine.jsonl is the same on both backends). Ray adds placement and transfer.
A Ray worker or node that dies is no input's fault: Ray runs the task again (twice), then the run
stops with RayPoolError, as it does when a task gives no reply within twice its bound (queued,
then running) plus two worker start-ups (re-running resumes).

Tasks get the driver's VSSL_*, AWS_* and FSSPEC_* variables (store endpoint, credentials, retry
settings), so every worker reaches the stores the driver does. Inputs must be readable from every
node of the cluster (URLs or a shared file system) and vssl installed on each.

ray_session connects to `address` (`--ray-address`: "auto", "HOST:6379", "ray://HOST:10001") and
waits (up to START_TIMEOUT_S) until the cluster offers `cpus` CPUs, as nodes started beside the
driver join (recipes/slurm/shard_ray.sbatch); or with no address it starts a local cluster (this
machine's CPUs, at least `cpus`; no dashboard; workers at the usual priority, not Ray's nice 15) and
stops it at the end. A driver already connected
(ray.init called by the caller) is used as it is.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, TypeVar

from data_prep.pool import START_TIMEOUT_S, InOrder, KillablePool

T = TypeVar("T")
_ENV_PREFIXES = ("VSSL_", "AWS_", "FSSPEC_")
_RETRIES = 2  # Ray runs a task again this many times when its worker or node dies
# Ray runs workers at nice 15 by default, below the driver and anything else on the machine; here the
# workers do the work (as the local pool's do, at the usual priority)
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0}


class RayPoolError(RuntimeError):
    """The Ray backend cannot run (not installed, no cluster, too few CPUs, workers lost)."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayPoolError("--backend ray: ray is not installed (pip install 'vssl[ray]')") from None
    return ray


@contextmanager
def ray_session(address: str, cpus: int) -> Iterator[None]:
    """Connected to a Ray cluster for the duration (see the module docstring)."""
    ray = import_ray()
    if ray.is_initialized():
        yield
        return
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=max(os.cpu_count() or 1, cpus), include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, _system_config=LOCAL_SYSTEM_CONFIG)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RayPoolError(f"--ray-address {address or '(local)'}: cannot start or reach a Ray cluster "
                           f"({' '.join(str(e).split())[:200]})") from None
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while address and ray.cluster_resources().get("CPU", 0) < cpus and time.monotonic() < deadline:
            time.sleep(1.0)  # nodes still joining; RayPool refuses if too few CPUs come
        yield
    finally:
        ray.shutdown()


_POOL: dict[tuple, KillablePool] = {}  # in a Ray worker process: its one-worker pool, kept between tasks


def _apply(task: tuple[Callable, tuple, Any]) -> Any:
    fn, args, item = task
    return fn(item, *args)


def _run(fn: Callable, args: tuple, task: Any, timeout_s: float, preload: tuple[str, ...]) -> Any:
    """A Ray task: fn(task, *args) in this Ray worker's one-worker KillablePool (made once per worker
    and setting, so later tasks, and later runs of the same driver, find it started)."""
    key = (timeout_s, (fn.__module__, *preload))
    if key not in _POOL:
        for old in _POOL.values():
            old.close()
        _POOL.clear()
        _POOL[key] = KillablePool(_apply, 1, timeout_s, preload=key[1])
    return next(_POOL[key].map([(fn, args, task)]))[1]


class RayPool:
    def __init__(self, fn: Callable, workers: int, timeout_s: float, args: tuple = (), preload: tuple[str, ...] = ()):
        self._ray = ray = import_ray()
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < workers:
            raise RayPoolError(f"--workers {workers}: the Ray cluster has {cpus:g} CPUs; use at most that many")
        env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}
        remote = ray.remote(num_cpus=1, max_retries=_RETRIES)(_run).options(runtime_env={"env_vars": env})
        fn_ref, args_ref = ray.put(fn), ray.put(args)
        self._submit = lambda task: remote.remote(fn_ref, args_ref, task, timeout_s, tuple(preload))
        self._workers = workers
        self._running: dict[Any, tuple[int, float]] = {}
        self._patience = 2 * (timeout_s + START_TIMEOUT_S)  # no reply by then: the Ray worker is stuck

    def map(self, tasks: Iterable[T], ahead: int = 0) -> Iterator[tuple[T, Any]]:
        """(task, result) pairs in task order; result is fn(task, *args) or a TaskFailed."""
        ray = self._ray
        order, ahead = InOrder(tasks), ahead or 4 * self._workers
        running = self._running  # object ref -> (task number, sent at)
        while True:
            while len(running) < 2 * self._workers and order.outstanding < ahead:
                if (taken := order.take()) is None:
                    break
                running[self._submit(taken[1])] = (taken[0], time.monotonic())
            yield from order.ready()
            if not running:
                if order.exhausted:
                    return
                continue
            oldest = min(sent for _, sent in running.values())
            wait_s = max(0.0, oldest + self._patience - time.monotonic())
            done, _ = ray.wait(list(running), num_returns=1, timeout=wait_s)
            if not done:
                raise RayPoolError(f"a Ray worker gave no reply within {self._patience:g}s; "
                                   f"re-run the same command to resume")
            seq, _ = running.pop(done[0])
            try:
                order.results[seq] = ray.get(done[0])
            except ray.exceptions.RayTaskError as e:  # _run itself failed (the pool catches fn's errors)
                raise RayPoolError(f"a Ray worker cannot run the work ({_first_line(e.cause)})") from None
            except ray.exceptions.RayError as e:  # the Ray worker or its node died, not the input
                raise RayPoolError(f"Ray lost the worker of one input {_RETRIES + 1} times ({_first_line(e)}); "
                                   f"re-run the same command to resume") from None

    def close(self) -> None:
        """Cancel what a run that stopped early left running (Ray workers keep their pools for
        later runs of this driver; ray_session's shutdown ends them)."""
        for ref in self._running:
            self._ray.cancel(ref, force=True)
        self._running.clear()

    def __enter__(self) -> "RayPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _first_line(error: BaseException) -> str:
    return f"{error.__class__.__name__}: {' '.join(str(error).split(chr(10), 1)[0].split())[:200]}"
