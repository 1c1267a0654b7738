"""Native libraries are loaded from a private copy named by their sha256, never from the artifact's path.

``dlopen`` matches libraries by file name: once ``tvm/cpu-x/model.so`` is loaded, a later
``dlopen`` of the same name returns the first library's code even after ``build --overwrite``
has put a different file there. So each library is copied (hashed while it is copied) into a
per-user cache folder under the name ``<sha256>.so``: a different file gets a different name, and
an equal name holds equal bytes. The cache folder is the user's own (mode 0700, owned by them, not
a symlink), so nobody can change a copy between its hash check and the ``dlopen``.

The copies are small (kernels; the weights live elsewhere) and shared by every process of the user
that loads the same library, which then share its pages too. Copies unused for ``MAX_AGE_DAYS`` are
removed when a new one is made.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
import tempfile
import time
from pathlib import Path

from ..errors import ArtifactError
from ..storage import storage_error

log = logging.getLogger(__name__)

CACHE_ENV = "FORGELINE_CACHE_DIR"  # as the tuning database's (compile/tuning/database.py)
MAX_AGE_DAYS = 30
_CHUNK = 1 << 20


def cache_folder() -> Path:
    """``$FORGELINE_CACHE_DIR/libs``, else ``~/.cache/forgeline/libs``; a private temp folder if neither works."""
    base = os.environ.get(CACHE_ENV)
    candidates = [Path(base).expanduser() if base else Path.home() / ".cache" / "forgeline"]
    candidates.append(Path(tempfile.gettempdir()) / f"forgeline-{os.getuid()}")
    problems = []
    for root in candidates:
        folder = root / "libs"
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            _check_private(folder)
            return folder
        except (OSError, ArtifactError) as exc:
            problems.append(f"{folder}: {exc}")
    raise ArtifactError(f"no private folder to load native libraries from ({'; '.join(problems)}); "
                        f"set {CACHE_ENV} to a writable folder of your own.")


def _check_private(folder: Path) -> None:
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ArtifactError(f"{folder} is not a plain folder")
    if st.st_uid != os.getuid():
        raise ArtifactError(f"{folder} belongs to another user")
    if st.st_mode & 0o022:
        os.chmod(folder, 0o700)  # ours: make it private rather than give up


def content_addressed_copy(path: Path, expected_sha256: str | None = None) -> tuple[str, Path]:
    """(sha256, path of a private copy named by it) of the library at ``path``.

    ``expected_sha256`` (the manifest's) is compared with the bytes actually copied, so a file
    swapped after the artifact's hash check is refused rather than loaded.
    """
    folder = cache_folder()
    tmp = folder / f".{secrets.token_hex(8)}.tmp"
    try:
        digest = _sha256(Path(path))
        _check_expected(path, digest, expected_sha256)
        final = folder / f"{digest}.so"
        if final.exists() and _sha256(final) == digest:
            os.utime(final)  # in use: keep it from the age-based cleanup
            return digest, final
        _check_expected(path, _copy_hashing(Path(path), tmp), digest)  # the bytes copied are the bytes hashed
        os.replace(tmp, final)
        _remove_old(folder)
        return digest, final
    except OSError as exc:
        raise storage_error(exc, f"copying {path} into {folder} to load it") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _check_expected(path: Path, digest: str, expected: str | None) -> None:
    if expected is not None and digest != expected:
        raise ArtifactError(f"{path} changed after its sha256 was checked (now {digest[:12]}…, expected "
                            f"{expected[:12]}…); it is not loaded. Load the artifact again.")


def _copy_hashing(src: Path, dst: Path) -> str:
    digest = hashlib.sha256()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
        while block := fin.read(_CHUNK):
            digest.update(block)
            fout.write(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _remove_old(folder: Path) -> None:
    cutoff = time.time() - MAX_AGE_DAYS * 86400
    for entry in folder.glob("*.so"):
        try:
            if entry.stat().st_mtime < cutoff:
                entry.unlink()
                log.info("removed %s, a library copy unused for %d days", entry, MAX_AGE_DAYS)
        except OSError:
            pass  # another process removed or uses it


__all__ = ["cache_folder", "content_addressed_copy"]
