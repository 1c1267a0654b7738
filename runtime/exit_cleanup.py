"""Temporary paths to remove when the process is told to stop (SIGTERM, SIGHUP) and exits at once.

A stop request must not unwind through native code: a Python exception raised while TVM runs a
Python callback can reach a C++ frame that cannot pass it on, and the process aborts (seen when
MetaSchedule tunes). So the CLI's handler (forgeline/cli/signals.py) does not raise: it removes
the paths registered here (staging folders, temporary files, tuning logs) and exits. That is as
safe for an artifact as a SIGKILL, which every writer already survives (artifact_io.py).
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path

_PENDING: dict[int, Path] = {}
_ids = itertools.count()


@contextlib.contextmanager
def removed_on_stop(path: Path) -> Iterator[Path]:
    """Within the block, ``path`` is removed if the process is stopped by a signal."""
    key = next(_ids)
    _PENDING[key] = Path(path)
    try:
        yield Path(path)
    finally:
        _PENDING.pop(key, None)


def remove_pending() -> None:
    """Remove every registered path (called from a signal handler: no locks, no raising)."""
    for path in list(_PENDING.values()):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


__all__ = ["remove_pending", "removed_on_stop"]
