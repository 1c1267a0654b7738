"""Confinement: every path the runtime opens is inside the artifact, listed in ``files`` and hashed.

Paths in a manifest are relative POSIX paths, already normalised (no ``.``, ``..``, ``//``, no
backslash), and once resolved (symlinks followed) they stay inside the artifact folder. Every
file the runtime may open (the graphs, every TVM library, the tokenizer, the golden vectors) must
be listed in ``files``, so its sha256 is checked before it is used. All of this is checked when an
artifact is loaded, before any native code is.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ArtifactError
from .format import GOLDEN_FILE, ONNX_FILE, Manifest
from .paths import confined


def opened_paths(manifest: Manifest) -> list[tuple[str, str]]:
    """(relative path, what it is) for every file the runtime may open."""
    paths = [(ONNX_FILE, "the ONNX graph")] if ONNX_FILE in manifest.files else []
    if GOLDEN_FILE in manifest.files:
        paths.append((GOLDEN_FILE, "the golden vectors"))
    paths += [(g.onnx, f"graph {name!r}") for name, g in manifest.graphs.items()]
    if manifest.tokenizer:
        paths.append((manifest.tokenizer, "the tokenizer"))
    for tag, build in manifest.builds.items():
        paths.append((build.lib, f"the library of build {tag}"))
        paths += [(lib, f"the {name!r} library of build {tag}") for name, lib in build.graph_libs.items()]
        paths += [(b["lib"], f"the bucket {key} library of build {tag}") for key, b in build.buckets.items()]
        if build.params_file:
            paths.append((build.params_file, f"the parameter file of build {tag}"))
        paths += [(b["params_file"], f"the bucket {key} parameter file of build {tag}")
                  for key, b in build.buckets.items() if b.get("params_file")]
    return paths


def check_confinement(root: Path, manifest: Manifest) -> None:
    """Refuse, with a sentence, any path that leads out of ``root`` or any file opened but not hashed."""
    for relpath in manifest.files:
        confined(root, relpath, "a listed file")
    for relpath, what in opened_paths(manifest):
        confined(root, relpath, what)
        if relpath not in manifest.files:
            raise ArtifactError(
                f"{what} ({relpath}) is not listed in the manifest's files, so its sha256 cannot be checked; "
                "the artifact is refused. Rebuild it with this forgeline."
            )


__all__ = ["check_confinement", "confined", "opened_paths"]
