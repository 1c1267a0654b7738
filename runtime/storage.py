"""Filesystem failures as sentences: disk full says disk full, a read-only artifact says so.

Every writer (export, compile, tune, the artifact's manifest, ``run -o``) turns the ``OSError`` of a
failed write into a ``StorageError`` through ``storage_error``, so the CLI prints one sentence
that names the path and what to do, never ``internal error, OSError: [Errno 28]``. Python's
``OSError`` carries the errno; TVM's export (a C compiler writing the library) reports it only as
text, so ``errno_in_text`` reads it back from there.
"""

from __future__ import annotations

import errno
import os

from .errors import StorageError

# errno -> (what happened, what to do)
_SENTENCES = {
    errno.ENOSPC: ("the disk is full", "free some space (or choose a folder on another disk) and run it again"),
    errno.EDQUOT: ("the disk quota is used up", "free some space within your quota and run it again"),
    errno.EROFS: ("the file system is read-only",
                  "copy the artifact to a writable folder (or remount it read-write) and run it there"),
    errno.EACCES: ("permission was denied", "run it as a user who may write there, or choose another folder"),
    errno.EPERM: ("the operation is not permitted", "run it as a user who may write there, or choose another folder"),
    errno.EFBIG: ("the file grew past the size limit (ulimit -f)", "raise the limit or choose a smaller model"),
}
# How the C library and tools spell them in messages, for errors that arrive as text only.
_TEXTS = {errno.ENOSPC: ("No space left on device",), errno.EDQUOT: ("Disk quota exceeded",),
          errno.EROFS: ("Read-only file system",), errno.EACCES: ("Permission denied",)}


def is_storage_errno(code: int | None) -> bool:
    return code in _SENTENCES


def errno_in_text(text: str) -> int | None:
    """The errno whose message appears in ``text`` (a compiler's or TVM's error), else None."""
    for code, phrases in _TEXTS.items():
        if any(phrase in text for phrase in phrases):
            return code
    return None


def storage_error(exc: BaseException, doing: str, code: int | None = None) -> StorageError:
    """A sentence for ``exc`` (an OSError, or ``code`` read from a message) raised while ``doing``."""
    code = code if code is not None else getattr(exc, "errno", None)
    where = getattr(exc, "filename", None)
    where = f" ({where})" if where else ""
    if code in _SENTENCES:
        what, todo = _SENTENCES[code]
        error = StorageError(f"{doing} failed because {what}{where}; nothing was changed. To fix it, {todo}.")
    else:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        error = StorageError(f"{doing} failed ({reason}){where}; nothing was changed.")
    error.errno = code
    return error


__all__ = ["errno_in_text", "is_storage_errno", "storage_error"]
