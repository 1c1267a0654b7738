"""Progress of a MetaSchedule tuning job: tasks, trials, best latency, time left.

MetaSchedule calls every measure callback after each round of candidates; this one counts the
trials of each task (the tuning ledger keeps those counts), remembers each task's best latency,
advances the search's progress bar (runtime/progress.py) and logs one INFO line per round.
"""

from __future__ import annotations

import logging
import time

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

from forgeline.runtime.progress import Task

logger = logging.getLogger(__name__)


@derived_object
class TuningProgress(PyMeasureCallback):
    """Counts trials per task and logs a progress line after every measured round."""

    def __init__(self, task_names: list[str], total_trials: int, bar: Task | None = None) -> None:
        super().__init__()
        self.bar = bar
        self.task_names = list(task_names)
        self.total_trials = max(total_trials, 1)
        self.trials = [0] * len(task_names)  # candidates measured, per task
        self.failed = [0] * len(task_names)  # of those, builds or runs that failed
        self.best_ms = [float("inf")] * len(task_names)
        self.started = time.perf_counter()

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        task_id = int(task_id)
        if not runner_results:  # a round in which this task had nothing new to try
            return
        for built, ran in zip(builder_results, runner_results):
            self.trials[task_id] += 1
            secs = [float(s) for s in ran.run_secs] if ran.run_secs is not None else []
            if built.error_msg is not None or ran.error_msg is not None or not secs:
                self.failed[task_id] += 1
                continue
            self.best_ms[task_id] = min(self.best_ms[task_id], 1e3 * sum(secs) / len(secs))
        self._log(task_id)

    def _log(self, task_id: int) -> None:
        done = sum(self.trials)
        elapsed = time.perf_counter() - self.started
        left = elapsed / done * max(self.total_trials - done, 0) if done else float("nan")
        started_tasks = sum(1 for t in self.trials if t)
        best = self.best_ms[task_id]
        if self.bar is not None:
            self.bar.advance(done,
                             info=f"{self.task_names[task_id][:32]} best {best:.4f} ms" if best < float("inf") else "")
        logger.info(
            "tuning: %d/%d trials, %d/%d tasks started; %s best %s; %.0f s elapsed, ~%.0f s left",
            done, self.total_trials, started_tasks, len(self.task_names), self.task_names[task_id],
            f"{best:.4f} ms" if best < float("inf") else "n/a (all failed)", elapsed, left)

    def summary(self) -> str:
        failed = sum(self.failed)
        return (f"{sum(self.trials)} trials on {sum(1 for t in self.trials if t)} task(s), "
                f"{failed} failed, in {time.perf_counter() - self.started:.1f} s")


def reset_metaschedule_loggers() -> None:
    """Drop handlers a previous tuning run left on MetaSchedule's logger; call before a new run.

    MetaSchedule rebuilds its logging config on every run and names the logger's existing
    handlers in it: an unnamed one (as test harnesses attach) crashes that, and the previous
    run's file handlers point into its deleted log folder.
    """
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    if not logger.isEnabledFor(logging.DEBUG):
        # The run gives its console handler this logger's level at that moment: WARNING keeps its
        # "[INFO] Logging directory: ..." line off the console (the run then sets DEBUG for its files).
        ms_logger.setLevel(logging.WARNING)
    for handler in list(ms_logger.handlers):
        name = handler.get_name()
        if name is None or name.startswith("tvm.s_tir.meta_schedule"):
            ms_logger.removeHandler(handler)
            handler.close()


def quiet_metaschedule_console() -> None:
    """Keep MetaSchedule's per-round task tables (stdout) and XGB lines in its log files only.

    Call after its loggers are created (``extracted_tasks_to_tune_contexts``); with forgeline
    logging at DEBUG the console stays as MetaSchedule set it.
    """
    if logger.isEnabledFor(logging.DEBUG):
        return
    for handler in logging.getLogger("tvm.s_tir.meta_schedule").handlers:
        if type(handler) is logging.StreamHandler:  # the console, not the file handlers
            handler.setLevel(logging.WARNING)


__all__ = ["TuningProgress", "quiet_metaschedule_console", "reset_metaschedule_loggers"]
