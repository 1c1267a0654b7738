"""SIGTERM and SIGHUP end a command like Ctrl-C: temporary files removed, one line, the exit status kept.

By default either signal killed the process on the spot: a compile's staging folder and a tune's
log folder under /tmp stayed behind, and the exit status (143, 129) came with no word. Raising an
exception from the handler is not safe while TVM runs (runtime/exit_cleanup.py says why), so the
handler prints the line, removes what runtime/exit_cleanup.py holds and exits with 128 + the
signal's number, as a shell reports it. Artifacts survive that as they survive a SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

from forgeline.runtime.exit_cleanup import remove_pending

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


_stderr: list[int] = []  # the terminal's stderr, saved: a compile sends fd 2 to a log file (compile/guards.py)


def _stop(signum, frame) -> None:
    line = f"error: stopped by {signal.Signals(signum).name}; nothing was changed.\n"
    with contextlib.suppress(OSError):
        os.write(_stderr[0] if _stderr else 2, line.encode())
    remove_pending()
    os._exit(128 + signum)


def handle_stop_signals() -> None:
    """Install the handler for SIGTERM and SIGHUP (main thread only; elsewhere Python cannot)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if not _stderr:
        with contextlib.suppress(OSError):
            _stderr.append(os.dup(sys.stderr.fileno()))
    for signum in SIGNALS:
        signal.signal(signum, _stop)


__all__ = ["handle_stop_signals"]
