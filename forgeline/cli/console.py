"""What a command shows while it works: one line per stage, then the result.

The library reports its stages through ``forgeline.runtime.progress``; this module draws them.

- On a terminal, a live ``rich`` display: a spinner per running stage, a bar with the count, the
  latest figure and the time left for counted work (tuning trials, training steps), and once a
  stage ends one static line with its elapsed time.
- Elsewhere (CI, a pipe), plain lines: one per finished stage, and a line at each quarter of
  counted work.
- ``-q``: nothing but the result and errors. ``-v``: forgeline's INFO logs and third-party
  warnings, with plain stage lines; ``-vv``: every library's debug logs.

Third-party noise (torch exporter warnings, TVM's C++ warnings on file descriptor 2, Python
warnings) is silenced unless ``-v`` is given.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn
from rich.text import Text

from forgeline.runtime.progress import Reporter, Task, reporting_to

QUIET, NORMAL, VERBOSE, DEBUG = 0, 1, 2, 3
# Loggers of libraries whose warnings are noise to a forgeline user (torch's exporter warns about
# torchvision ops on every export). Child loggers that torch does not reset when it is imported.
_NOISY_LOGGERS = ("torch.onnx._internal",)


def verbosity(quiet: bool, verbose: int) -> int:
    """The output mode from ``-q`` and the number of ``-v`` flags."""
    return QUIET if quiet else min(NORMAL + verbose, DEBUG)


@contextlib.contextmanager
def command_console(level: int) -> Iterator[None]:
    """Logging, third-party noise and the progress display for one command, undone on exit."""
    with _native_stderr_to_null(level < VERBOSE), _logging(level):
        reporter = _reporter(level)
        try:
            with reporting_to(reporter):
                yield
        finally:
            reporter.close()


# ------------------------------------------------------------------------------------ reporters


class PlainReporter(Reporter):
    """Plain lines for output that is not a terminal: each finished stage, quarters of counted work."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.quarters: dict[int, int] = {}

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)

    def advanced(self, task: Task) -> None:
        if not task.total:
            return
        quarter = 4 * min(task.done, task.total) // task.total
        if 0 < quarter < 4 and quarter > self.quarters.get(id(task), 0):
            self.quarters[id(task)] = quarter
            self._print(f"{task.name}: {_count(task)} ({quarter * 25}%){_info(task)}, {task.elapsed:.0f} s")

    def finished(self, task: Task, ok: bool) -> None:
        self.quarters.pop(id(task), None)
        if ok:  # a failure is told by the command's one `error:` sentence, not by a stage line
            count = f" {_count(task)}{_info(task)}," if task.total else ""
            self._print(f"{task.name}:{count} done in {task.elapsed:.1f} s")


class RichReporter(Reporter):
    """A live display on a terminal: running stages animate, finished ones stay as one line each."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(file=sys.stderr)
        self.bars = Progress(SpinnerColumn(finished_text="[green]✓"), TextColumn("{task.description}"),
                             _BarColumn(), _CountColumn(), TextColumn("{task.fields[info]}"), _TimeColumn(),
                             console=self.console, transient=True, redirect_stdout=False)
        self.ids: dict[int, int] = {}  # forgeline task -> rich task

    def started(self, task: Task) -> None:
        if not self.ids:
            self.bars.start()
        self.ids[id(task)] = self.bars.add_task(task.name, total=task.total or 1, info="", task=task)

    def advanced(self, task: Task) -> None:
        if id(task) in self.ids:
            self.bars.update(self.ids[id(task)], total=task.total or 1, completed=task.done, info=task.info)

    def finished(self, task: Task, ok: bool) -> None:
        rich_id = self.ids.pop(id(task), None)
        if rich_id is None:
            return
        if ok:  # a failure is told by the command's one `error:` sentence; its live line just goes
            # A search may need fewer trials than planned; the work is done, so the bar is full.
            self.bars.update(rich_id, completed=task.total or 1, info=task.info)
            self.bars.stop_task(rich_id)
            self.console.print(self.bars.make_tasks_table([t for t in self.bars.tasks if t.id == rich_id]))
        self.bars.remove_task(rich_id)
        if not self.ids:
            self.bars.stop()

    def close(self) -> None:
        self.ids.clear()
        self.bars.stop()


def _count(task: Task) -> str:
    return f"{task.done}/{task.total} {task.unit}".rstrip()


def _info(task: Task) -> str:
    return f", {task.info}" if task.info else ""


class _BarColumn(BarColumn):
    """The bar, for counted work only; a stage that counts nothing shows its spinner alone."""

    def render(self, task):
        return super().render(task) if task.fields["task"].total else Text("")


class _CountColumn(ProgressColumn):
    def render(self, task):
        return Text(_count(task.fields["task"]) if task.fields["task"].total else "")


class _TimeColumn(ProgressColumn):
    """Elapsed seconds; for counted work still running, the time left at the pace so far."""

    def render(self, task):
        ours = task.fields["task"]
        text = f"{ours.elapsed:.1f} s"
        if ours.total and 0 < ours.done < ours.total and not task.finished:
            text += f", ~{ours.elapsed / ours.done * (ours.total - ours.done):.0f} s left"
        return Text(text, style="cyan")


def _reporter(level: int) -> Reporter:
    if level == QUIET:
        return Reporter()
    if level == NORMAL and sys.stderr.isatty():
        return RichReporter()
    return PlainReporter()


# ------------------------------------------------------------------------------ logs and noise


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it changes while a command runs)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


@contextlib.contextmanager
def _logging(level: int) -> Iterator[None]:
    """forgeline's logs at the asked level, other libraries' only under -v; restored on exit."""
    root, ours = logging.getLogger(), logging.getLogger("forgeline")
    noisy = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    saved = root.level, ours.level, [n.level for n in noisy]
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel({QUIET: logging.ERROR, NORMAL: logging.ERROR, VERBOSE: logging.WARNING}.get(level, logging.DEBUG))
    ours.setLevel({QUIET: logging.ERROR, NORMAL: logging.WARNING, VERBOSE: logging.INFO}.get(level, logging.DEBUG))
    for logger in noisy:
        logger.setLevel(logging.ERROR if level < VERBOSE else logging.NOTSET)
    logging.captureWarnings(True)  # Python warnings become py.warnings log records: shown under -v
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(saved[0])
        ours.setLevel(saved[1])
        for logger, was in zip(noisy, saved[2]):
            logger.setLevel(was)


@contextlib.contextmanager
def _native_stderr_to_null(silence: bool) -> Iterator[None]:
    """Point file descriptor 2 at /dev/null (TVM's and ONNX Runtime's C++ warnings, worker
    processes' chatter), while ``sys.stderr`` keeps writing where fd 2 went before."""
    try:
        saved = os.dup(2) if silence else None
    except OSError:  # no fd 2 at all: nothing to silence
        saved = None
    if saved is None:
        yield
        return
    old_stderr = sys.stderr
    try:
        real_fd_2 = old_stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a captured stream (tests): it stays as it is
        real_fd_2 = False
    if real_fd_2:
        old_stderr.flush()
        sys.stderr = open(os.dup(saved), "w", buffering=1, encoding=old_stderr.encoding,  # noqa: SIM115
                          errors=old_stderr.errors)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    try:
        yield
    finally:
        if real_fd_2:
            sys.stderr.close()
            sys.stderr = old_stderr
        os.dup2(saved, 2)
        os.close(saved)

