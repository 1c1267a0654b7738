"""Compile a bundle for a target and check the build against the golden vectors.

A build that misses tolerance is removed again and the failure raised, so an artifact never holds a
build that looks good but is not. The failed measurement stays in the manifest for inspection.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from forgeline.runtime.errors import ArtifactError, CompileError, ConfigError
from forgeline.runtime.format import (ONNX_FILE, REDUCED_PRECISION_TOLERANCE, TVM_DIR, BuildRecord, Manifest,
                                     StageRecord)
from forgeline.runtime.host import can_run, describe_host
from forgeline.runtime.kv_check import with_generation_rows
from forgeline.runtime.model import load
from forgeline.runtime.parity import raise_if_failed

from .cpu.matmul import DECODE_ROWS
from .targets import resolve_target
from .tuning import TuneOptions, tune_artifact
from .tvm_build import build_tvm

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class CompileOptions:
    """Where to compile for; resolved values are logged once before work starts."""

    target: str = "cpu"  # a preset: "cpu" (this host's LLVM CPU) or "cuda"
    arch: str | None = None  # cuda: "sm_90" by default
    mcpu: str | None = None  # cpu: LLVM CPU name; detected from the host by default
    num_cores: int | None = None  # cpu: threads the schedules assume; all cores by default
    precision: str = "fp32"  # "fp16": cuda only, tensor-core matmuls (tag gets a "-fp16" suffix)


PRECISIONS = ("fp32", "fp16")


def _resolve_spec(options: CompileOptions):
    if options.precision not in PRECISIONS:
        raise ConfigError(f"precision {options.precision!r} is not one of {', '.join(PRECISIONS)}.")
    if options.precision != "fp32" and options.target != "cuda":
        raise ConfigError(f"precision {options.precision} is built for --target cuda only; "
                          f"{options.target} builds are fp32.")
    spec = resolve_target(options.target, arch=options.arch, mcpu=options.mcpu, num_cores=options.num_cores)
    if options.precision == "fp32":
        return spec
    return dataclasses.replace(spec, tag=f"{spec.tag}-{options.precision}")  # beside the fp32 build


def compile_artifact(path: str | Path, options: CompileOptions = CompileOptions(),
                     tune: TuneOptions | None = None) -> Manifest:
    """Add a TVM build for ``options.target`` to the bundle or artifact at ``path``.

    With ``tune``, also add a tuned static-shape build per bucket (compile/tuning/).
    """
    root = Path(path)
    manifest = Manifest.load(root)
    manifest.verify_files(root)
    if ONNX_FILE not in manifest.files:
        raise ArtifactError(f"{root} holds no {ONNX_FILE}; export the model first with `forgeline export`.")
    spec = _resolve_spec(options)
    log.info("compile %s for %s (target %s, %s)", root, spec.tag, spec.target, options.precision)
    build_dir = root / TVM_DIR / spec.tag
    _forget_build(root, manifest, spec.tag)
    build_dir.mkdir(parents=True)
    result = build_tvm(root / ONNX_FILE, spec, build_dir, precision=options.precision)
    rel = lambda name: f"{TVM_DIR}/{spec.tag}/{name}"  # noqa: E731 - paths inside the artifact
    build = BuildRecord(
        tag=spec.tag, kind=spec.kind, target=spec.target, requires=spec.requires, lib=rel(result.lib_file),
        codegen_only=result.codegen_only, note=result.note, build_seconds=round(result.seconds, 2),
        precision=options.precision,
    )
    manifest.builds[spec.tag] = build
    for name in [result.lib_file, *result.extra_files]:
        manifest.record_file(root, rel(name))
    try:
        build.graph_libs = _build_graphs(root, manifest, spec, build_dir, options.precision)
    except CompileError:
        _forget_build(root, manifest, spec.tag)  # a build without its graphs is not complete
        manifest.save(root)
        raise
    manifest.save(root)
    _check_build(root, manifest, build)
    if tune is not None:
        manifest = tune_artifact(root, spec.tag, tune)
    return manifest


def _build_graphs(root: Path, manifest: Manifest, spec, build_dir: Path, precision: str) -> dict[str, str]:
    """Build each extra graph (KV-cache prefill/decode, ...) into tvm/<tag>/<graph>/; lib paths by name.

    A graph that does not compile fails the whole build with a sentence naming it.
    """
    libs = {}
    for index, (name, graph) in enumerate(manifest.graphs.items(), 1):
        log.info("building graph %s (%d/%d)", name, index, len(manifest.graphs))
        rows = DECODE_ROWS if name == "decode" else None  # one row per sequence per step
        try:
            result = build_tvm(root / graph.onnx, spec, build_dir / name, gemm_rows=rows, precision=precision)
        except CompileError as exc:
            raise CompileError(f"The {name} graph of {manifest.name} did not compile for {spec.tag}, so "
                               f"the build is incomplete and was removed: {exc}") from exc
        for file in [result.lib_file, *result.extra_files]:
            manifest.record_file(root, f"{TVM_DIR}/{spec.tag}/{name}/{file}")
        libs[name] = f"{TVM_DIR}/{spec.tag}/{name}/{result.lib_file}"
    return libs


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
    """Run one build on every golden case, and its KV-cache graphs, and compare with the eager outputs."""
    model = load(root, backend="tvm", target=tag)
    if model.build.precision == "fp16":  # checked against eager fp32 at the stated fp16 tolerance
        model.manifest.tolerance = REDUCED_PRECISION_TOLERANCE["float16"]
    return with_generation_rows(model.selfcheck(), model)


def _forget_build(root: Path, manifest: Manifest, tag: str, keep_stage: bool = False) -> None:
    prefix = f"{TVM_DIR}/{tag}/"
    manifest.builds.pop(tag, None)
    if not keep_stage:
        manifest.stages.pop(f"{TVM_DIR}/{tag}", None)
        for stage in [k for k in manifest.stages if k.startswith(prefix)]:  # its buckets' checks
            manifest.stages.pop(stage)
    manifest.files = {k: v for k, v in manifest.files.items() if not k.startswith(prefix)}
    shutil.rmtree(root / TVM_DIR / tag, ignore_errors=True)
