"""Atomic files and the artifact's file-name constants: the low level that format.py and
artifact_io.py share (no dependency on the manifest itself)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from .exit_cleanup import removed_on_stop

LOCK_FILE = ".forgeline.lock"
SIGNATURE_FILE = "manifest.sig"  # runtime/signing.py; a writer that changes the manifest drops it
STAGING_PREFIX = ".forgeline-tmp-"
ASIDE_PREFIX = ".forgeline-old-"
FORMAT_MARKER = "forgeline-artifact"  # manifest["format"]; older manifests are recognised by their keys
LEGACY_KEYS = ("name", "preset", "family", "inputs", "outputs", "files", "format_version")
MAX_MANIFEST_BYTES = 64 << 20  # a manifest is kilobytes; refuse to parse a giant file


def current_umask() -> int:
    """The process umask, read without changing it (os.umask would, process-wide, for a moment)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022  # the common default where /proc is missing


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, fsync, rename: readers see old or new, never half."""
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write(path: Path, write: Callable) -> None:
    """``write(binary file)`` into a temporary file beside ``path``, fsync, rename over ``path``.

    A failed write (a full disk) removes the temporary file and leaves ``path`` as it was.
    """
    path = Path(path)
    tmp, fd = create_locked(lambda: path.with_name(f"{STAGING_PREFIX}{path.name}-{os.getpid()}-{secrets.token_hex(4)}"))
    try:
        with removed_on_stop(tmp), os.fdopen(os.dup(fd), "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def create_locked(new_name: Callable[[], Path], folder: bool = False) -> tuple[Path, int]:
    """Create a new staging file (or ``folder``) and hold an exclusive flock on it; (path, descriptor).

    The flock, not a pid in the name, tells other writers that the entry is in use: pids are per
    PID namespace (two containers on one volume see different ones), a flock is not, and the
    kernel drops it when its holder dies. Another writer may see the entry in the instant between
    its creation and the flock, take it for stale and remove it; the inode check notices that,
    and a fresh name is tried.
    """
    for _ in range(100):
        path = new_name()
        try:
            if folder:
                path.mkdir()
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            else:
                # 0o666 under the umask, as a plain open() would create it: artifacts are meant to be shared.
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:
            continue  # a folder removed as stale before we could lock it
        fcntl.flock(fd, fcntl.LOCK_EX)  # a remover holds it only while it removes
        try:
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return path, fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise OSError(f"could not create a staging entry next to {new_name()}")


def try_lock(path: Path) -> int | None:
    """A descriptor holding an exclusive flock on ``path``; None when another holder has it (or it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # gone, a symlink, or not ours to open
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
