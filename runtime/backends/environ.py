"""Environment variables set for one block only: TVM reads some at import or pool creation, and
the runtime must leave ``os.environ`` as it found it (child processes, later compiles)."""

from __future__ import annotations

import contextlib
import os
import threading

ENV_LOCK = threading.Lock()  # scoped_environ changes os.environ; one block at a time


@contextlib.contextmanager
def scoped_environ(**values: str):
    """Set environment variables (where unset) for the duration of the block only."""
    added = [name for name in values if name not in os.environ]
    os.environ.update({name: values[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)
