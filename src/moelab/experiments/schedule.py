"""Scheduling many runs: group them into batches, skip batches already stored, execute the rest
(in this process, a pool of worker processes, or any :class:`concurrent.futures.Executor`), and
store each run as its batch finishes.

Batches (:func:`plan_batches`) are formed from the whole list of runs, never from what is left to
do, so a sweep that resumes after a crash trains exactly the batches an uninterrupted sweep trains
and writes the same database; a crash loses at most the batches in flight. The driver, the process
that calls :func:`run_all`, is the only writer of the store: executors only compute
:class:`~moelab.experiments.execute.RunOutcome` values and hand them back.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from moelab._validation import positive_int
from moelab.experiments.config import AnyRun, RunConfig
from moelab.experiments.execute import (
    RunOutcome,
    batch_key,
    describe_run,
    execute,
    execute_batch,
)
from moelab.experiments.store import ResultStore


class RunsInterrupted(KeyboardInterrupt):
    """:func:`run_all` was interrupted (Ctrl-C): ``stored`` runs finished and were stored by this
    call, ``remaining`` were not; rerunning resumes with those."""

    def __init__(self, stored: int, remaining: int) -> None:
        super().__init__(f"interrupted: {stored} runs stored; rerun to resume")
        self.stored = stored
        self.remaining = remaining


def store_outcome(store: ResultStore, outcome: RunOutcome) -> bool:
    """Write a finished run to ``store``; False if it was already there."""
    run = outcome.run
    return store.add(
        run_id=run.run_id(), experiment=run.experiment, labels=run.labels, seed=run.seed,
        config=run.to_dict(), test_mse=outcome.test_mse, test_sup=outcome.test_sup,
        metrics=outcome.metrics, routing=outcome.routing, seconds=outcome.seconds,
        history=outcome.history, evals=outcome.evals,
    )


def pending_runs(runs: Sequence[AnyRun], store: ResultStore) -> list[AnyRun]:
    """The runs not yet in ``store``, each once, in order."""
    pending, seen = [], set()
    for run in runs:
        rid = run.run_id()
        if rid not in seen and not store.has(rid):
            pending.append(run)
        seen.add(rid)
    return pending


#: Set to "0" to train every run alone (the reference path), as ``run_all(batch=False)`` does.
BATCH_ENV = "MOELAB_BATCH"
#: The most runs one batch holds (bigger groups are split in order).
MAX_BATCH = 64


def plan_batches(runs: Sequence[AnyRun], *, batch: bool = True,
                 max_size: int = MAX_BATCH) -> list[list[AnyRun]]:
    """The runs (each once, in order of first appearance) grouped into batches: runs with equal
    :func:`~moelab.experiments.execute.batch_key` together, in order, at most ``max_size`` per
    batch; runs without a key (or all runs, if not ``batch``) alone."""
    max_size = positive_int("max_size", max_size)
    groups: dict[str, list[AnyRun]] = {}
    planned: list[list[AnyRun]] = []
    seen = set()
    for run in runs:
        rid = run.run_id()
        if rid in seen:
            continue
        seen.add(rid)
        key = batch_key(run) if batch else None
        if key is None:
            planned.append([run])
            continue
        if key not in groups or len(groups[key]) == max_size:
            groups[key] = []
            planned.append(groups[key])
        groups[key].append(run)
    return planned


def _batching(batch: bool | None) -> bool:
    return os.environ.get(BATCH_ENV, "1") != "0" if batch is None else batch


def run_all(runs: Sequence[AnyRun], store: ResultStore, *, workers: int = 1,
            progress: bool = True, executor: Executor | None = None,
            batch: bool | None = None) -> list[str]:
    """Run every configuration not yet in ``store``; return the run ids executed now.

    Each finished run is written to the store at once (atomically), so an interrupted sweep
    resumes where it stopped. ``executor``: any :class:`concurrent.futures.Executor` to execute
    runs on (the caller owns and shuts it down). Without one, ``workers`` > 1 runs independent runs
    in a pool of worker processes started with the "spawn" method (a script that calls this must
    guard its entry point with ``if __name__ == "__main__":``), and ``workers`` = 1 runs them here.
    Ctrl-C stops the sweep: workers are stopped, and :class:`RunsInterrupted` (a
    KeyboardInterrupt) says how many runs were stored.

    Runs are executed in batches (:func:`plan_batches`, formed from all of ``runs``): runs that
    differ only in :data:`~moelab.experiments.execute.PER_MEMBER` train as one batched model
    (:func:`~moelab.experiments.execute.execute_batch`); a batch with any run not yet stored is
    executed whole and its missing runs stored. ``batch=False``, or the environment variable
    ``MOELAB_BATCH=0`` when ``batch`` is None, trains every run alone.
    """
    workers = positive_int("workers", workers)
    pending = pending_runs(runs, store)
    waiting = {run.run_id() for run in pending}
    batches = [b for b in plan_batches(runs, batch=_batching(batch))
               if any(run.run_id() in waiting for run in b)]
    done: list[str] = []
    bar = tqdm(total=len(pending), desc="runs", disable=not progress or not pending)
    try:
        if executor is not None:
            _drain(executor, batches, store, done, bar)
        elif workers == 1 or len(batches) <= 1:
            for b in batches:
                bar.set_postfix_str(describe_run(b[0]) + (f" (+{len(b) - 1})" if len(b) > 1
                                                          else ""), refresh=True)
                outcomes = (execute_batch(b) if len(b) > 1
                            else [execute(b[0], progress=progress)])
                _store_all(store, outcomes, done, bar)
        else:
            _run_in_pool(min(workers, len(batches), os.cpu_count() or 1), batches, store, done,
                         bar)
    except KeyboardInterrupt:
        # Counted from the store: Ctrl-C may land between a run's commit and its bookkeeping.
        stored = sum(store.has(run.run_id()) for run in pending)
        raise RunsInterrupted(stored, len(pending) - stored) from None
    finally:
        bar.close()
    return done


def _store_all(store: ResultStore, outcomes: list[RunOutcome], done: list[str],
               bar: tqdm) -> None:
    """Store a batch's outcomes (those already stored are left as they are)."""
    for outcome in outcomes:
        if store_outcome(store, outcome):
            done.append(outcome.run.run_id())
            bar.set_postfix_str(describe_run(outcome.run), refresh=False)
            bar.update()


def _drain(executor: Executor, batches: list[list[AnyRun]], store: ResultStore, done: list[str],
           bar: tqdm) -> None:
    order = sorted(batches, key=_cost, reverse=True)  # the longest first, as in the pool
    _collect([executor.submit(_execute_quietly, b) for b in order], store, done, bar)


def _collect(futures: list[Future], store: ResultStore, done: list[str], bar: tqdm) -> None:
    """Store each batch's outcomes as they arrive (the driver is the only writer)."""
    try:
        for future in as_completed(futures):
            _store_all(store, future.result(), done, bar)
    except BaseException:
        for future in futures:
            future.cancel()
        raise


def _run_in_pool(workers: int, batches: list[list[AnyRun]], store: ResultStore, done: list[str],
                 bar: tqdm) -> None:
    ctx = torch.multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_ignore_sigint)
    try:
        with _sigint_ignored():  # the workers, started here, inherit "ignore Ctrl-C" from birth
            # The longest batches first, so that the workers finish together.
            order = sorted(batches, key=_cost, reverse=True)
            futures = [pool.submit(_execute_quietly, b) for b in order]
        _collect(futures, store, done, bar)
    except BaseException:
        _stop_workers(pool)
        raise
    pool.shutdown()


def _execute_quietly(batch: list[AnyRun]) -> list[RunOutcome]:
    return execute_batch(batch)


def _cost(batch: list[AnyRun]) -> float:
    """A rough cost of a batch, to order the pool's work: member-steps times a per-step cost that
    grows with the model's layers and widths (a construction: 1)."""
    run = batch[0]
    if not isinstance(run, RunConfig):
        return 1.0
    model = run.model
    if model.kind == "moe":
        layers, width = model.layers, model.moe.experts.hidden
    else:
        layers, width = model.dense_depth - 1, model.dense_hidden
    # measured on batched Table 4 models: a layer costs about as much as 64 hidden units
    return len(batch) * run.train.steps * layers * (1 + width / 64)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while worker processes start: a process started with SIGINT ignored keeps it
    ignored, so a Ctrl-C while they import cannot print their tracebacks. Only the main thread
    can change signal handling; elsewhere this does nothing (the initializer still applies)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the driver, which stops them (no traceback from each worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now, without waiting for their runs."""
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(10)
