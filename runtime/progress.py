"""Progress of long work, reported by the library to whichever front end listens.

Library code marks each stage of long work with ``stage(...)`` and, where it counts something
(tuning trials, training steps), advances it; it never prints. A front end (the CLI's console)
installs a ``Reporter`` with ``reporting_to`` and draws what it is told. Without one, reports go
nowhere. Progress is reported as events, not read back from log lines: logs stay free to change.

Every stage module may import this one (it needs only the standard library), so it lives beside
the runtime's errors.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


class Reporter:
    """What a front end implements; this base ignores everything (the library's default)."""

    def started(self, task: "Task") -> None:
        pass

    def advanced(self, task: "Task") -> None:
        pass

    def finished(self, task: "Task", ok: bool) -> None:
        """``ok`` is False when the stage ended by an exception (it still ends, so lines close)."""

    def close(self) -> None:
        """The front end is done: stop drawing."""


@dataclass
class Task:
    """One stage in flight: a name, and for counted work how far it is (``done`` of ``total``)."""

    name: str
    total: int | None = None  # None: not counted, shown with a spinner
    unit: str = ""  # what is counted: "trials", "steps"
    done: int = 0
    info: str = ""  # the latest figure worth showing, e.g. "best 0.123 ms" or "loss 2.31"
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    reporter: Reporter = field(default_factory=Reporter, repr=False)  # the one told of its start

    @property
    def elapsed(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    def advance(self, done: int | None = None, *, by: int = 1, info: str | None = None) -> None:
        """Set ``done`` (or add ``by`` to it) and the latest figure, and tell the reporter.

        Work that runs past its plan (MetaSchedule may measure a few more candidates than asked)
        raises ``total`` with it, so the count never reads "18/16".
        """
        self.done = done if done is not None else self.done + by
        if self.total is not None and self.done > self.total:
            self.total = self.done
        if info is not None:
            self.info = info
        self.reporter.advanced(self)


_NOBODY = Reporter()
_lock = threading.Lock()
_installed: list[Reporter] = []


def _current() -> Reporter:
    return _installed[-1] if _installed else _NOBODY


@contextlib.contextmanager
def reporting_to(reporter: Reporter) -> Iterator[Reporter]:
    """Send the progress of everything run inside the block to ``reporter`` (process-wide)."""
    with _lock:
        _installed.append(reporter)
    try:
        yield reporter
    finally:
        with _lock:
            _installed.remove(reporter)


@contextlib.contextmanager
def stage(name: str, total: int | None = None, unit: str = "") -> Iterator[Task]:
    """Report one stage of work: started on entry, finished on exit (``ok=False`` on an exception)."""
    reporter = _current()
    task = Task(name, total, unit, reporter=reporter)
    reporter.started(task)
    ok = False
    try:
        yield task
        ok = True
    finally:
        task.ended = time.perf_counter()
        reporter.finished(task, ok)


__all__ = ["Reporter", "Task", "reporting_to", "stage"]
