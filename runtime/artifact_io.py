"""Transactional artifact writes: staging folders, the manifest lock, atomic files and swaps.

Every writer (export, compile, tune, build --overwrite) follows one pattern, so that a failed,
killed or interrupted run leaves the previous artifact exactly as it was:

1. build the new part in a temporary folder *next to* its target (same filesystem, so a rename
   moves it), named ``.forgeline-tmp-<what>-<pid>-<random>``, holding a flock on the folder itself
   for as long as it works there, so that a later run can tell a live writer's folder from a dead one's;
2. check it;
3. move it into place with ``os.replace`` while holding the artifact's lock
   (``fcntl.flock`` on ``<artifact>/.forgeline.lock``), re-reading the manifest inside the lock,
   merging this run's change into it and writing it atomically (temp file, fsync, rename).

The kernel drops a killed process's flock, so a stale lock never blocks the next run; a killed
run's staging folder is removed by the next writer, which finds nobody holding its flock. Pids
decide nothing: they are per PID namespace, and two containers may write to one volume.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from .atomic import (ASIDE_PREFIX, FORMAT_MARKER, LEGACY_KEYS, LOCK_FILE, MAX_MANIFEST_BYTES, SIGNATURE_FILE,
                     STAGING_PREFIX, create_locked, fsync_dir, atomic_write_bytes, current_umask, try_lock)
from .errors import ArtifactError
from .format import MANIFEST_FILE, Manifest
from .exit_cleanup import removed_on_stop
from .storage import storage_error

log = logging.getLogger(__name__)




# ------------------------------------------------------------------------------------------ lock


@contextlib.contextmanager
def artifact_lock(root: Path, shared: bool = False) -> Iterator[None]:
    """Hold the artifact's lock: exclusive for writers; shared for readers where the lock file exists.

    A reader of a read-only or lock-less artifact (a copy, an install) reads without a lock. The
    lock file is opened without following a symlink and without blocking (a FIFO would block the
    open forever), and anything but a regular file is refused.
    """
    fd = _open_lock_file(Path(root), shared)
    if fd is None:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _open_lock_file(root: Path, shared: bool) -> int | None:
    """A descriptor of ``root``'s regular lock file; None for a reader where there is none to open."""
    path = root / LOCK_FILE
    flags = (os.O_RDONLY if shared else os.O_RDWR | os.O_CREAT) | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ArtifactError(f"{path} is a symbolic link; the artifact's lock file must be a plain file. Remove "
                                "it (forgeline creates it again) and retry.") from exc
        if shared:
            return None
        raise storage_error(exc, f"locking {root} for writing") from exc
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        raise ArtifactError(f"{path} is {_file_kind(kind)}, not a regular file; the artifact's lock file must be a "
                            "plain file. Remove it (forgeline creates it again) and retry.")
    return fd


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISDIR, "a folder"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def update_manifest(root: Path, add: Callable, *, drop: Callable | None = None,
                    moves: list[tuple[Path, Path]] = ()):
    """Under the lock: re-read the manifest, ``drop`` what is replaced, move staged paths in, ``add``, save.

    ``add(manifest)`` merges this run's result into the manifest as it is on disk *now*, so a
    concurrent writer's builds are kept. Before a move replaces a path, the manifest is saved once
    without what ``drop`` removed, so a crash in the middle of the moves leaves a loadable
    artifact (without the replaced part), never a manifest that lists missing or changed files.
    Returns the saved manifest.
    """
    root = Path(root)
    with artifact_lock(root):
        remove_stale_staging(root)
        manifest = Manifest.load(root)
        if drop is not None:
            drop(manifest)
        if any(Path(final).exists() for _, final in moves):
            drop_signature(root)
            manifest.save(root)  # no longer points at what is about to be replaced
        for staged, final in moves:
            replace_path(Path(staged), Path(final))
        add(manifest)
        drop_signature(root)
        manifest.save(root)
    return manifest


def drop_signature(root: Path) -> None:
    sig = Path(root) / SIGNATURE_FILE
    if sig.exists():
        sig.unlink()
        log.warning("%s changed, so its signature %s was removed; sign it again with `forgeline sign`.",
                    root, SIGNATURE_FILE)


# --------------------------------------------------------------------------------- staging + swap


def staging_path(target: Path, what: str | None = None) -> Path:
    """A fresh name next to ``target`` for building its replacement (not created)."""
    target = Path(target)
    return target.parent / f"{STAGING_PREFIX}{what or target.name}-{os.getpid()}-{secrets.token_hex(4)}"


@contextlib.contextmanager
def staging_dir(target: Path, what: str | None = None) -> Iterator[Path]:
    """A new empty folder next to ``target``, locked while in use; removed unless the caller moved it into place."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(target.parent)
        path, fd = create_locked(lambda: staging_path(target, what), folder=True)
    except OSError as exc:  # a read-only artifact, a full disk: a sentence, before any work
        raise storage_error(exc, f"writing into {target.parent}") from exc
    try:
        with removed_on_stop(path):
            yield path
    finally:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        os.close(fd)  # after the removal: nobody may take a half-removed folder for stale and race us


def replace_path(staged: Path, final: Path) -> None:
    """Move ``staged`` to ``final``; an existing ``final`` is renamed aside first and removed after."""
    aside = None
    held = None
    if final.is_symlink() or final.exists():
        held = try_lock(final)  # the aside copy is in use: other writers leave it alone
        aside = final.parent / f"{ASIDE_PREFIX}{final.name}-{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(final, aside)
    try:
        os.replace(staged, final)
    except BaseException:
        if aside is not None:
            os.replace(aside, final)  # put the old one back
        if held is not None:
            os.close(held)
        raise
    fsync_dir(final.parent)
    if aside is not None:
        _remove(aside)
    if held is not None:
        os.close(held)


def remove_stale_staging(folder: Path) -> None:
    """Remove staging/aside entries in ``folder`` whose writer is gone (nobody holds their flock)."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if not entry.name.startswith((STAGING_PREFIX, ASIDE_PREFIX)):
            continue
        fd = try_lock(entry)
        if fd is None:
            continue  # a live writer's, in this PID namespace or another
        try:
            log.info("removing %s, left by a writer that no longer runs", entry)
            _remove(entry)
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------------- replacing an artifact


def is_forgeline_manifest(path: Path) -> bool:
    """True when ``path`` is a forgeline manifest.json (format marker, or an older one's keys)."""
    path = Path(path)
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_MANIFEST_BYTES:
            return False
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    if not isinstance(data, dict):
        return False
    if "format" in data:
        return data["format"] == FORMAT_MARKER
    return all(key in data for key in LEGACY_KEYS) and isinstance(data.get("files"), dict)


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse an output that is a file, a symlink, or a non-empty folder that is not ours to replace."""
    out = Path(out)
    if out.is_symlink():
        raise ArtifactError(f"{out} is a symbolic link; give the path of a real folder to write the artifact into.")
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} is a file, not a folder; choose a folder path for the artifact.")
    if out.parent.exists() and not out.parent.is_dir():
        raise ArtifactError(f"{out.parent} is a file, so {out} cannot be created; choose another path.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ArtifactError(f"{out} already exists and is not empty; choose another folder or pass --overwrite.")
        if not is_forgeline_manifest(out / MANIFEST_FILE):
            raise ArtifactError(f"{out} is not a forgeline artifact (it has no forgeline {MANIFEST_FILE}), so it "
                                "will not be overwritten; choose another folder.")


@contextlib.contextmanager
def staged_artifact(out: Path, overwrite: bool) -> Iterator[Path]:
    """Write a whole new artifact beside ``out``; on success swap it in, else leave ``out`` untouched."""
    out = Path(out)
    check_output_folder(out, overwrite)
    with staging_dir(out) as tmp:
        yield tmp
        check_output_folder(out, overwrite)  # still ours to replace after the (long) build
        replace_path(tmp, out)


__all__ = ["LOCK_FILE", "SIGNATURE_FILE", "artifact_lock", "atomic_write_bytes", "check_output_folder",
           "current_umask", "is_forgeline_manifest", "replace_path", "staged_artifact", "staging_dir",
           "update_manifest"]
