"""Guards around TVM's native calls: Ctrl-C stays an interrupt, and TVM's C++ log goes through logging.

TVM turns a KeyboardInterrupt raised inside one of its Python callbacks into its own error, which
the compile stage would otherwise report as "TVM could not compile". ``watch_interrupts`` notes
every SIGINT so that ``reraise_if_interrupted`` can turn such an error back into the interrupt.

TVM's C++ code writes warnings straight to file descriptor 2 ("Fast mode segfaults when ...", a
dozen per compile), past Python's logging, so ``-q`` could not silence them. ``native_log_to``
sends fd 2 to a temporary file during the call and logs each line at INFO, where ``-q`` hides
them and ``-v`` shows them with the rest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

_interrupted = threading.Event()
_depth = 0  # watch_interrupts blocks open now (they nest: compile -> build_tvm)


@contextlib.contextmanager
def watch_interrupts() -> Iterator[None]:
    """Note SIGINTs during the block (main thread only; elsewhere Python delivers none).

    A Ctrl-C that lands while TVM runs Python code from C++ (a pass, a log or type callback) can
    have its KeyboardInterrupt swallowed there, so the compile would run on and land. The note
    outlives that: leaving the outermost watched block with an interrupt noted raises it again,
    before anything is committed.
    """
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def note(signum, frame):
        if previous == signal.SIG_IGN:
            return
        _interrupted.set()
        if callable(previous):
            previous(signum, frame)
        raise KeyboardInterrupt

    if _depth == 0:
        _interrupted.clear()
    _depth += 1
    signal.signal(signal.SIGINT, note)
    try:
        yield
        if _interrupted.is_set():
            raise KeyboardInterrupt  # noted, but its exception was lost inside a native call
    finally:
        _depth -= 1
        signal.signal(signal.SIGINT, previous)


def reraise_if_interrupted(exc: BaseException) -> None:
    """Raise KeyboardInterrupt when ``exc`` is TVM's wrapping of a Ctrl-C."""
    if _interrupted.is_set() or "KeyboardInterrupt" in f"{type(exc).__name__} {exc}":
        raise KeyboardInterrupt from exc


@contextlib.contextmanager
def native_log_to(logger: logging.Logger) -> Iterator[None]:
    """Capture what native code writes to fd 2 during the block; log it line by line at INFO."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (a daemon): nothing to capture
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines():
                if line.strip():
                    logger.info("tvm: %s", line.strip())




def require_full_tvm() -> None:
    """A sentence, not an AttributeError, when this process holds the runtime-only TVM."""
    import sys

    tvm = sys.modules.get("tvm")
    base = getattr(tvm, "base", None)
    if tvm is not None and base is not None and "tvm_compiler" not in getattr(base, "_LOADED_LIBS", {"tvm_compiler": 0}):
        from forgeline.runtime.errors import CompileError

        raise CompileError("this process imported TVM's runtime library alone (forgeline's runtime loaded a build "
                           "before anything was compiled), and TVM cannot add its compiler later; compile in a "
                           "new process (e.g. run `forgeline compile`), or import forgeline.compile first.")


__all__ = ["native_log_to", "require_full_tvm", "reraise_if_interrupted", "watch_interrupts"]
