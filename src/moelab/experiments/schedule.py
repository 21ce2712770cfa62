"""Scheduling many runs: skip those already stored, execute the rest (in this process, a pool of
worker processes, or any :class:`concurrent.futures.Executor`), and store each as it finishes.

The driver, the process that calls :func:`run_all`, is the only writer of the store: executors
only compute :class:`~moelab.experiments.execute.RunOutcome` values and hand them back.
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
from moelab.experiments.config import AnyRun
from moelab.experiments.execute import RunOutcome, describe_run, execute
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


def run_all(runs: Sequence[AnyRun], store: ResultStore, *, workers: int = 1,
            progress: bool = True, executor: Executor | None = None) -> list[str]:
    """Run every configuration not yet in ``store``; return the run ids executed now.

    Each finished run is written to the store at once (atomically), so an interrupted sweep
    resumes where it stopped. ``executor``: any :class:`concurrent.futures.Executor` to execute
    runs on (the caller owns and shuts it down). Without one, ``workers`` > 1 runs independent runs
    in a pool of worker processes started with the "spawn" method (a script that calls this must
    guard its entry point with ``if __name__ == "__main__":``), and ``workers`` = 1 runs them here.
    Ctrl-C stops the sweep: workers are stopped, and :class:`RunsInterrupted` (a
    KeyboardInterrupt) says how many runs were stored.
    """
    workers = positive_int("workers", workers)
    pending = pending_runs(runs, store)
    done: list[str] = []
    bar = tqdm(total=len(pending), desc="runs", disable=not progress or not pending)
    try:
        if executor is not None:
            _drain(executor, pending, store, done, bar)
        elif workers == 1 or len(pending) <= 1:
            for run in pending:
                bar.set_postfix_str(describe_run(run), refresh=True)
                store_outcome(store, execute(run, progress=progress))
                done.append(run.run_id())
                bar.update()
        else:
            _run_in_pool(min(workers, len(pending), os.cpu_count() or 1), pending, store, done, bar)
    except KeyboardInterrupt:
        # Counted from the store: Ctrl-C may land between a run's commit and its bookkeeping.
        stored = sum(store.has(run.run_id()) for run in pending)
        raise RunsInterrupted(stored, len(pending) - stored) from None
    finally:
        bar.close()
    return done


def _drain(executor: Executor, pending: list[AnyRun], store: ResultStore, done: list[str],
           bar: tqdm) -> None:
    _collect([executor.submit(_execute_quietly, run) for run in pending], store, done, bar)


def _collect(futures: list[Future], store: ResultStore, done: list[str], bar: tqdm) -> None:
    """Store each outcome as it arrives (the driver is the only writer)."""
    try:
        for future in as_completed(futures):
            outcome = future.result()
            store_outcome(store, outcome)
            done.append(outcome.run.run_id())
            bar.set_postfix_str(describe_run(outcome.run), refresh=False)
            bar.update()
    except BaseException:
        for future in futures:
            future.cancel()
        raise


def _run_in_pool(workers: int, pending: list[AnyRun], store: ResultStore, done: list[str],
                 bar: tqdm) -> None:
    ctx = torch.multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_ignore_sigint)
    try:
        with _sigint_ignored():  # the workers, started here, inherit "ignore Ctrl-C" from birth
            futures = [pool.submit(_execute_quietly, run) for run in pending]
        _collect(futures, store, done, bar)
    except BaseException:
        _stop_workers(pool)
        raise
    pool.shutdown()


def _execute_quietly(run: AnyRun) -> RunOutcome:
    return execute(run)


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
