"""Compile a bundle for a target and check the build against the golden vectors.

A build that misses tolerance is removed again and the failure raised, so an artifact never holds a
build that looks good but is not. The failed measurement stays in the manifest for inspection.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from forgeline.runtime.errors import ArtifactError
from forgeline.runtime.format import ONNX_FILE, TVM_DIR, BuildRecord, Manifest, StageRecord
from forgeline.runtime.host import can_run, describe_host
from forgeline.runtime.model import load
from forgeline.runtime.parity import raise_if_failed

from .targets import resolve_target
from .tvm_build import build_tvm

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class CompileOptions:
    """Where to compile for; resolved values are logged once before work starts."""

    target: str = "cpu"  # a preset: "cpu" (this host's LLVM CPU) or "cuda"
    arch: str | None = None  # cuda: "sm_90" by default
    mcpu: str | None = None  # cpu: LLVM CPU name; detected from the host by default
    num_cores: int | None = None  # cpu: threads the schedules assume; all cores by default


def compile_artifact(path: str | Path, options: CompileOptions = CompileOptions()) -> Manifest:
    """Add a TVM build for ``options.target`` to the bundle or artifact at ``path``."""
    root = Path(path)
    manifest = Manifest.load(root)
    manifest.verify_files(root)
    if ONNX_FILE not in manifest.files:
        raise ArtifactError(f"{root} holds no {ONNX_FILE}; export the model first with `forgeline export`.")
    spec = resolve_target(options.target, arch=options.arch, mcpu=options.mcpu, num_cores=options.num_cores)
    log.info("compile %s for %s (target %s)", root, spec.tag, spec.target)
    build_dir = root / TVM_DIR / spec.tag
    _forget_build(root, manifest, spec.tag)
    build_dir.mkdir(parents=True)
    result = build_tvm(root / ONNX_FILE, spec, build_dir)
    rel = lambda name: f"{TVM_DIR}/{spec.tag}/{name}"  # noqa: E731 - paths inside the artifact
    build = BuildRecord(
        tag=spec.tag, kind=spec.kind, target=spec.target, requires=spec.requires, lib=rel(result.lib_file),
        codegen_only=result.codegen_only, note=result.note, build_seconds=round(result.seconds, 2),
    )
    manifest.builds[spec.tag] = build
    for name in [result.lib_file, *result.extra_files]:
        manifest.record_file(root, rel(name))
    manifest.save(root)
    _check_build(root, manifest, build)
    return manifest


def _check_build(root: Path, manifest: Manifest, build: BuildRecord) -> None:
    runnable, why = can_run(build.requires, describe_host())
    if build.codegen_only or not runnable:
        log.warning("build %s not checked on this host: %s", build.tag, why or build.note)
        return
    record = measure_build(root, build.tag)
    manifest.stages[record.stage] = record
    if not record.passed:
        _forget_build(root, manifest, build.tag, keep_stage=True)
    manifest.save(root)
    raise_if_failed(record)
    log.info("%s vs eager: pass", record.stage)


def measure_build(root: Path, tag: str) -> StageRecord:
    """Run one build on every golden case and compare with the eager outputs."""
    return load(root, backend="tvm", target=tag).selfcheck()


def _forget_build(root: Path, manifest: Manifest, tag: str, keep_stage: bool = False) -> None:
    prefix = f"{TVM_DIR}/{tag}/"
    manifest.builds.pop(tag, None)
    if not keep_stage:
        manifest.stages.pop(f"{TVM_DIR}/{tag}", None)
    manifest.files = {k: v for k, v in manifest.files.items() if not k.startswith(prefix)}
    shutil.rmtree(root / TVM_DIR / tag, ignore_errors=True)
