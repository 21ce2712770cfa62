"""Executors on existing engines, for :func:`~moelab.experiments.schedule.run_all`: Ray tasks and
SLURM jobs (submitit), each as a :class:`concurrent.futures.Executor`.

Both adapters are generic: ``submit(fn, *args, **kwargs)`` runs any picklable callable on the
engine and returns a :class:`~concurrent.futures.Future` of its result, so whatever unit of work
the scheduler submits (one run, or a batch of runs) runs unchanged. Results travel back to the
driver, the process that called ``run_all``, which alone writes the results store: the workers
never open the SQLite database.

Each engine is an optional extra (``pip install 'moelab[ray]'``, ``pip install 'moelab[slurm]'``);
using an engine whose package is missing raises an :class:`ImportError` naming the extra. The
workers must run the same moelab (same code, same version) with torch installed; see
docs/sweeps.md.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Executor, Future, InvalidStateError
from concurrent.futures import wait as wait_for
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from moelab._validation import positive_float, positive_int

#: The choices of ``moelab run --executor``: a local process pool (run_all's own), Ray, submitit.
EXECUTORS = ("process", "ray", "submitit")
_EXTRAS = {"ray": "ray", "submitit": "slurm"}


def _engine(module: str):
    """Import an engine's package, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"the {module} executor needs the {module} package: "
                          f"pip install 'moelab[{_EXTRAS[module]}]'") from exc


def _call(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """What a Ray task runs: any callable with its arguments."""
    return fn(*args, **kwargs)


def _copy_outcome(target: Future, source: Future) -> None:
    """Give ``target`` the result or exception of the finished ``source`` (unless cancelled)."""
    exc = source.exception()
    try:
        if exc is None:
            target.set_result(source.result())
        else:
            target.set_exception(exc)
    except InvalidStateError:  # cancelled meanwhile: nobody waits for the outcome
        pass


class RayExecutor(Executor):
    """Each ``submit`` is a Ray task (one CPU); its result comes back as a future.

    ``address``: a running cluster to connect to (``"auto"``, ``"ray://host:10001"``, ...);
    ``None`` starts a local cluster with ``num_cpus`` CPUs (default: all), its session files under
    ``temp_dir`` (Ray's default: /tmp/ray), without the dashboard. If Ray is already initialised
    in this process, that connection is used as it is, and left open at shutdown; otherwise
    :meth:`shutdown` disconnects (and stops the local cluster it started).
    """

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None,
                 temp_dir: str | Path | None = None) -> None:
        ray = _engine("ray")
        if num_cpus is not None:
            positive_int("num_cpus", num_cpus)
        if address is not None and (num_cpus is not None or temp_dir is not None):
            raise ValueError(f"RayExecutor(address={address!r}) connects to a running cluster; "
                             "num_cpus and temp_dir only apply to a local cluster (address=None)")
        self._ray = ray
        self._owner = not ray.is_initialized()
        if self._owner:
            if address is None:
                ray.init(num_cpus=num_cpus, include_dashboard=False,
                         _temp_dir=None if temp_dir is None else str(Path(temp_dir).resolve()))
            else:
                ray.init(address=address)
        self._task = ray.remote(num_cpus=1)(_call)
        self._pending: dict[Future, Any] = {}
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to a RayExecutor after shutdown")
            ref = self._task.remote(fn, args, kwargs)
            future: Future = Future()
            self._pending[future] = ref
        future.add_done_callback(self._settle)
        ref.future().add_done_callback(functools.partial(_copy_outcome, future))
        return future

    def _settle(self, future: Future) -> None:
        """A finished future forgets its task; a cancelled one cancels it."""
        with self._lock:
            ref = self._pending.pop(future, None)
        if future.cancelled() and ref is not None:
            self._ray.cancel(ref, force=True)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; with ``cancel_futures`` (or ``wait=False``) cancel the tasks not
        finished, else wait for them; then disconnect if this executor connected."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = dict(self._pending)
        if cancel_futures or not wait:
            for future in pending:
                future.cancel()  # and its task (see _settle)
        else:
            wait_for(pending)  # the caller reads each outcome from its future
        if self._owner:
            self._ray.shutdown()


class SubmititExecutor(Executor):
    """Each ``submit`` is a submitit job (a SLURM job, or a local process); its result comes back
    as a future.

    ``folder``: where submitit keeps each job's pickled call, result and logs; on SLURM it must be
    on a filesystem that the driver and the compute nodes share. ``cluster``: ``"slurm"``,
    ``"local"`` (a process per job on this machine, for testing) or ``None`` (SLURM if available,
    else local). ``max_jobs`` bounds the jobs in flight (``None``: no bound, the cluster queues
    them). ``parameters`` go to :meth:`submitit.AutoExecutor.update_parameters`, e.g.
    ``timeout_min=60, slurm_partition="cpu", mem_gb=4, cpus_per_task=1``. A background thread
    submits queued calls and polls the jobs every ``poll_s`` seconds.
    """

    def __init__(self, folder: str | Path, *, cluster: str | None = None,
                 max_jobs: int | None = None, poll_s: float = 1.0, **parameters: Any) -> None:
        submitit = _engine("submitit")
        if max_jobs is not None:
            positive_int("max_jobs", max_jobs)
        self._poll_s = positive_float("poll_s", poll_s)
        self._executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        self._executor.update_parameters(**{"cpus_per_task": 1, "timeout_min": 60, **parameters})
        self._max_jobs = max_jobs
        self._queue: deque[tuple[Future, Callable[..., Any], tuple, dict]] = deque()
        self._jobs: dict[Any, Future] = {}
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="submitit-executor", daemon=True)
        self._thread.start()

    @property
    def cluster(self) -> str:
        """The cluster the jobs go to (``"slurm"``, ``"local"``, ...)."""
        return self._executor.cluster

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        with self._wake:
            if self._closed:
                raise RuntimeError("cannot submit to a SubmititExecutor after shutdown")
            self._queue.append((future, fn, args, kwargs))
            self._wake.notify()
        return future

    def _serve(self) -> None:
        """Submit queued calls while slots are free, hand finished jobs' results to their futures."""
        while True:
            with self._wake:
                if self._closed and not self._queue and not self._jobs:
                    return
                start = []
                while self._queue and (self._max_jobs is None
                                       or len(self._jobs) + len(start) < self._max_jobs):
                    start.append(self._queue.popleft())
            for future, fn, args, kwargs in start:
                if not future.set_running_or_notify_cancel():
                    continue  # cancelled while queued
                try:
                    job = self._executor.submit(fn, *args, **kwargs)
                except BaseException as exc:  # the submission's error is the call's
                    future.set_exception(exc)
                    continue
                with self._wake:
                    self._jobs[job] = future
            with self._wake:
                in_flight = list(self._jobs.items())
            for job, future in in_flight:
                if not job.done():
                    continue
                with self._wake:
                    if self._jobs.pop(job, None) is None:
                        continue  # cancelled by shutdown meanwhile
                try:
                    result = job.result()
                except BaseException as exc:  # the job's error is the call's
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            with self._wake:
                if not start or self._jobs:
                    self._wake.wait(self._poll_s)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; with ``cancel_futures`` (or ``wait=False``) cancel the queued calls
        and the jobs in flight, else wait for every job to finish."""
        with self._wake:
            self._closed = True
            if cancel_futures or not wait:
                for future, *_ in self._queue:
                    future.cancel()
                self._queue.clear()
                for job, future in self._jobs.items():
                    job.cancel(check=False)
                    future.set_exception(CancelledError(f"job {job.job_id} cancelled at shutdown"))
                self._jobs.clear()
            self._wake.notify()
        if wait:
            self._thread.join()


@contextmanager
def open_executor(kind: str, *, workers: int = 1, ray_address: str | None = None,
                  ray_temp_dir: str | Path | None = None,
                  submitit_folder: str | Path | None = None, submitit_cluster: str | None = None,
                  submitit_parameters: dict[str, Any] | None = None) -> Iterator[Executor | None]:
    """The executor ``moelab run --executor KIND`` runs on, shut down when the block ends
    (cancelling what is left if the block raised, e.g. on Ctrl-C).

    ``"process"`` yields ``None``: :func:`run_all` then uses its own pool of ``workers`` processes.
    ``"ray"``: a local cluster of ``workers`` CPUs, or the cluster at ``ray_address``.
    ``"submitit"``: jobs under ``submitit_folder`` on ``submitit_cluster``, at most ``workers``
    of them in flight at once.
    """
    if kind not in EXECUTORS:
        raise ValueError(f"executor {kind!r} is unknown; expected one of {list(EXECUTORS)}")
    workers = positive_int("workers", workers)
    if kind == "process":
        yield None
        return
    if kind == "ray":
        local = ray_address is None
        executor: Executor = RayExecutor(address=ray_address, num_cpus=workers if local else None,
                                         temp_dir=ray_temp_dir if local else None)
    else:
        if submitit_folder is None:
            raise ValueError("the submitit executor needs a folder for its jobs (submitit_folder, "
                             "--submitit-folder DIR)")
        executor = SubmititExecutor(submitit_folder, cluster=submitit_cluster, max_jobs=workers,
                                    **(submitit_parameters or {}))
    try:
        yield executor
    except BaseException:
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown()
