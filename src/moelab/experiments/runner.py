"""Runs, in three steps, each its own module (this module keeps the names importable):

* :mod:`moelab.experiments.build`: the task and model a :class:`RunConfig` describes;
* :mod:`moelab.experiments.execute`: one run, built, trained and measured, in this process;
* :mod:`moelab.experiments.schedule`: many runs, skipping those stored, on a pool or any executor,
  storing each as it finishes.
"""

from moelab.experiments.build import BuiltTask, build_model, build_task
from moelab.experiments.execute import RunOutcome, describe_run, execute, single_thread
from moelab.experiments.measure import routing_summary
from moelab.experiments.schedule import RunsInterrupted, pending_runs, run_all, store_outcome

__all__ = ["BuiltTask", "RunOutcome", "RunsInterrupted", "build_model", "build_task",
           "describe_run", "execute", "pending_runs", "routing_summary", "run_all",
           "single_thread", "store_outcome"]
