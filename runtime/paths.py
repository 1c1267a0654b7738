"""The one check every path from a manifest passes before it is opened: relative, normalised, inside."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from .errors import ArtifactError


def confined(root: Path, relpath: object, what: str) -> Path:
    """``root / relpath`` after checking that it cannot lead outside ``root``."""
    if not isinstance(relpath, str) or not relpath:
        raise ArtifactError(f"the manifest gives {what} as {relpath!r}, not a relative path; rebuild the artifact.")
    pure = PurePosixPath(relpath)
    if "\\" in relpath or "\x00" in relpath or pure.is_absolute() or ".." in pure.parts \
            or pure.as_posix() != relpath:
        raise ArtifactError(
            f"the manifest gives {what} as {relpath!r}: paths in an artifact must be relative, normalised and "
            "inside the artifact folder (no '/' at the start, no '..'); the manifest is corrupt or edited."
        )
    base = Path(root).resolve()
    path = base / relpath
    if not path.resolve().is_relative_to(base):
        raise ArtifactError(
            f"{what} {relpath!r} is a symbolic link (or lies under one) that leads outside the artifact folder "
            f"{root}; the artifact is refused. Replace the link with the file itself."
        )
    return path
