"""Tune an artifact's CPU or CUDA build per shape bucket: the entry point behind `forgeline tune`."""

from __future__ import annotations

from pathlib import Path

from forgeline.runtime.errors import ArtifactError, ConfigError
from forgeline.runtime.confine import check_confinement
from forgeline.runtime.format import Manifest

from .buckets import tune_buckets
from .options import TuneOptions, resolve_tuning


def tune_artifact(path: str | Path, target_tag: str, options: TuneOptions) -> Manifest:
    """Add a tuned build per bucket to the artifact's existing build ``target_tag``."""
    root = Path(path)
    manifest = Manifest.load(root)
    check_confinement(root, manifest)
    manifest.verify_files(root)
    build = manifest.builds.get(target_tag)
    if build is None:
        raise ArtifactError(f"{root} has no build {target_tag!r} to tune (it holds "
                            f"{', '.join(manifest.builds) or 'none'}); run `forgeline compile "
                            f"{root} --target cpu` first.")
    if build.kind not in ("llvm", "cuda") or (build.kind == "cuda" and build.precision != "fp32"):
        raise ConfigError(f"Tuning supports CPU (llvm) builds at every precision and fp32 CUDA builds; "
                          f"{target_tag} is a {build.precision} {build.kind} build.")
    resolved = resolve_tuning(options, manifest, target_tag)
    if build.kind == "cuda":
        from .cuda_search import check_measurable

        check_measurable(resolved.rpc)  # before any import or search work
    return tune_buckets(root, manifest, build, resolved)
