"""Environment variables TVM reads. Most are set for one block only (TVM reads them at import or
pool creation, and the runtime leaves ``os.environ`` as it found it); TVM_NUM_THREADS stays set
(``allow_tvm_threads``), because TVM reads it at every parallel launch."""

from __future__ import annotations

import contextlib
import logging
import os
import threading

logger = logging.getLogger(__name__)

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


def allow_tvm_threads(num_threads: int) -> None:
    """Let TVM's parallel loops use ``num_threads``: set TVM_NUM_THREADS for the process if unset.

    TVM checks that variable at *every* parallel launch, and without it allows half the logical
    CPUs on x86 (it assumes hyper-threading): on a 2-core machine without SMT that is one, and
    every kernel ran serially although ``config_threadpool`` reported two threads (bert-small
    1x128: 9.0 ms; 5.2 ms with the variable). It stays set, so child processes inherit it; a value
    the user set is kept, with a warning when it allows fewer threads than asked for.
    """
    from forgeline.runtime.host import cpu_core_count

    wanted = max(num_threads, cpu_core_count())
    with ENV_LOCK:
        current = os.environ.get("TVM_NUM_THREADS")
        if current is None:
            os.environ["TVM_NUM_THREADS"] = str(wanted)
            logger.debug("TVM_NUM_THREADS=%d for this process", wanted)
        elif not current.strip().isdigit() or int(current) < num_threads:
            logger.warning("TVM_NUM_THREADS=%s allows fewer than the %d threads asked for; TVM "
                           "runs its kernels on fewer threads.", current, num_threads)
