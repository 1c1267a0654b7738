"""Atomic files and the artifact's file-name constants: the low level that format.py and
artifact_io.py share (no dependency on the manifest itself)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

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
    path = Path(path)
    tmp = path.with_name(f"{STAGING_PREFIX}{path.name}-{os.getpid()}-{secrets.token_hex(4)}")
    # 0o666 under the umask, as a plain open() would create it: artifacts are meant to be shared.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
