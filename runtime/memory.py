"""Give freed memory back to the system between the stages of a build.

A build frees each stage's weights (the torch model, ONNX Runtime's sessions, one graph's Relax
constants) before the next stage allocates its own, but glibc's malloc keeps freed heap pages
for reuse, so the process's resident size keeps the high-water mark of every earlier stage
(fragmented arenas return nothing on their own). ``release_freed_memory`` collects Python's
cycles and asks glibc to return what is free (``malloc_trim``); on other C libraries it only
collects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)
_LIBC = None


def release_freed_memory() -> None:
    """Collect garbage and return free heap pages to the operating system (glibc)."""
    global _LIBC
    gc.collect()
    if _LIBC is None:
        _LIBC = _open_libc()
    trim = getattr(_LIBC, "malloc_trim", None) if _LIBC else None
    if trim is not None:
        trim(0)


def _open_libc():
    """glibc by its soname first: ``find_library`` runs ``ldconfig`` in a child process, which in a
    build process of several GB is a fork that (briefly) doubles what it appears to use."""
    for name in ("libc.so.6", ctypes.util.find_library("c")):
        try:
            return ctypes.CDLL(name) if name else False
        except OSError:
            continue
    return False


__all__ = ["release_freed_memory"]
