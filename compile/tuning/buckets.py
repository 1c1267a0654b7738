"""Build, record and check one tuned library per shape bucket (the work behind ``tune_artifact``).

Each bucket build is checked before the artifact keeps it: on random valid inputs at the bucket's
shape it must match ONNX Runtime (the reference the export stage already matched against eager
PyTorch) within the build's tolerance (its precision's), in a staging folder beside its place.
Only a bucket that passes is moved in and recorded (result in ``manifest.stages`` under
``tvm/<tag>/<bucket>``), under the artifact's lock; one that misses, or a tune that is killed,
leaves the artifact as it was. A reduced-precision build's bucket runs the build's own dense-layer
kernels (tuning/precision.py) and shares its parameter file: the packed weights are the same
tensors, stored once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from forgeline.runtime.amx import needs_amx, request_amx_permission
from forgeline.runtime.errors import ArtifactError
from forgeline.runtime.format import ONNX_FILE, TVM_DIR, BuildRecord, Manifest, StageRecord, Tolerance
from forgeline.runtime.host import can_run, describe_host
from forgeline.runtime.inputs import random_inputs
from forgeline.runtime import progress
from forgeline.runtime.params_file import PARAMS_FILE, ParamBinding, parse_header
from forgeline.runtime.paths import confined
from forgeline.runtime.parity import compare_outputs, raise_if_failed, stage_record

from .database import TuningDatabase
from .builder import limit_tensor_intrinsics
from .options import ResolvedTuning, bucket_key
from .precision import build_kernels
from ..params_store import ParamStoreWriter
from ..tvm_build import import_relax

logger = logging.getLogger(__name__)

CHECK_CASES = 2  # random input sets per bucket check
CHECK_SEED = 2_000  # seeds the golden and fresh cases never use


def tune_buckets(root: Path, manifest: Manifest, build: BuildRecord, tuning: ResolvedTuning) -> Manifest:
    """Tune, export and check every bucket of ``tuning`` for ``build``; returns the manifest."""
    # Before MetaSchedule's TuneContext imports every target's tensor intrinsics (~28 s).
    limit_tensor_intrinsics(build.requires.get("arch", ""))
    from tvm.target import Target

    from .search import SearchSettings

    settings = SearchSettings(trials=tuning.trials, max_trials_per_task=tuning.max_trials_per_task,
                              timeout_s=tuning.timeout_s, rpc=tuning.rpc, seed=tuning.seed,
                              tune_matmuls=tuning.tune_matmuls, kernels=build_kernels(build), vm=build.vm)
    db = TuningDatabase(tuning.database)
    for index, dims in enumerate(tuning.buckets, 1):
        logger.info("bucket %d/%d: %s", index, len(tuning.buckets), bucket_key(dims))
        manifest = _tune_bucket(root, manifest, build, dims, db, Target(build.target), settings)
        build = manifest.builds[build.tag]
    return manifest


def _tune_bucket(root, manifest: Manifest, build: BuildRecord, dims: dict[str, int],
                 db: TuningDatabase, target, settings) -> Manifest:
    """Tune one bucket in a staging folder, check it there, then move it in and record it (artifact_io)."""
    from forgeline.runtime.artifact_io import staging_dir, update_manifest
    from forgeline.runtime.format import sha256_file

    if build.kind == "cuda":
        from .cuda_search import tune_cuda_module as tune_module
    else:
        from .search import tune_module

    key = bucket_key(dims)
    shapes = {s.name: [dims[d] if isinstance(d, str) else d for d in s.dims] for s in manifest.inputs}
    mod = import_relax(root / ONNX_FILE, shapes)
    with db.locked(), progress.stage(f"tune bucket {key}"):
        tuned = tune_module(mod, target, db, settings)
        database_sha = db.sha256()
    lib = f"{TVM_DIR}/{build.tag}/bucket-{key}.so"
    params_path = f"{TVM_DIR}/{build.tag}/bucket-{key}.{PARAMS_FILE}"
    stage = f"{TVM_DIR}/{build.tag}/{key}"
    with staging_dir(root / lib) as staged:
        _export(tuned.executable, build, staged / "bucket.so")
        keys, extra = _store_bucket_params(root, build, tuned, staged / PARAMS_FILE)
        bucket = {
            "dims": dict(dims), "lib": lib, "params": keys,
            "trials": tuned.trials, "reused_trials": tuned.reused_trials,
            "tasks_tuned": tuned.tasks_tuned, "tasks_default": tuned.tasks_default,
            "gemm_schedule": tuned.gemm_schedule,
            "tuning_seconds": round(tuned.seconds, 2), "database": str(db.folder),
            "database_sha256": database_sha,
        }
        if build.kind == "cuda" and not can_run(build.requires, describe_host())[0]:
            bucket["note"] = "not checked on this host: it has no GPU (tuned through RPC)"
            logger.warning("bucket %s of %s not checked on this host: it has no GPU", key, build.tag)
            record = None
        else:
            files = tuple(p for p in (extra, _build_params(root, build)) if p is not None)
            if needs_amx(build.requires):  # the AMX bf16 kernels: before their first tile instruction
                request_amx_permission()
            with progress.stage(f"check bucket {key} vs ONNX Runtime"):
                record = check_bucket(root, manifest, str((staged / "bucket.so").relative_to(root)), dims,
                                      stage=stage, device=build.device,
                                      params=ParamBinding(files, tuple(keys)) if keys else None,
                                      tolerance=build.parity_tolerance)
            raise_if_failed(record)  # a bucket that misses is never kept; the artifact stays as it was
        digest = sha256_file(staged / "bucket.so")
        moves = [(staged / "bucket.so", root / lib)]
        if extra is not None:  # tensors the build's file lacks (a layout MetaSchedule chose)
            bucket["params_file"] = params_path
            moves.append((extra, root / params_path))
            params_digest = sha256_file(extra)

        def drop(current: Manifest) -> None:
            if build.tag not in current.builds:
                raise ArtifactError(f"build {build.tag} was removed from {root} while bucket {key} was tuned; "
                                    "compile it again, then tune.")
            current.builds[build.tag].buckets.pop(key, None)
            current.files.pop(lib, None)
            current.files.pop(params_path, None)

        def add(current: Manifest) -> None:
            current.builds[build.tag].buckets[key] = bucket
            current.files[lib] = digest
            if extra is not None:
                current.files[params_path] = params_digest
            if record is not None:
                current.stages[stage] = record

        manifest = update_manifest(root, add, drop=drop, moves=moves)
    logger.info("bucket %s: %d trials run, %d reused; %d task(s) tuned, %d left at defaults",
                key, tuned.trials, tuned.reused_trials, len(tuned.tasks_tuned), len(tuned.tasks_default))
    return manifest


def _build_params(root: Path, build: BuildRecord) -> Path | None:
    return confined(root, build.params_file, "the build's parameter file") if build.params_file else None


def _store_bucket_params(root: Path, build: BuildRecord, tuned, path: Path) -> tuple[list[str], Path | None]:
    """The bucket's parameter keys; tensors the build's file lacks go to ``path`` (returned), else None."""
    shared = _build_params(root, build)
    known = set(parse_header(shared)[0]) if shared is not None else set()
    store = ParamStoreWriter(path, known=known)
    try:
        keys = store.add(tuned.params)
        tuned.params = []  # stored: free them before the check loads the library
        written = store.finish()
    except BaseException:
        store.abandon()
        raise
    return keys, (path if written else None)


def _export(executable, build: BuildRecord, lib_path: Path) -> None:
    if build.kind == "cuda":
        from ..cuda.export import export_cuda

        export_cuda(executable, build.target, lib_path)
    else:
        executable.export_library(str(lib_path))


def check_bucket(root: Path, manifest: Manifest, lib: str, dims: dict[str, int], stage: str,
                 device: str = "cpu", params: ParamBinding | None = None,
                 tolerance: Tolerance | None = None) -> StageRecord:
    """The bucket library against ONNX Runtime on random valid inputs of the bucket's shape, within
    ``tolerance`` (a reduced-precision build's own; the manifest's when None)."""
    tolerance = tolerance or manifest.tolerance
    from forgeline.runtime.backends.ort import OrtExecutor
    from forgeline.runtime.backends.tvm import TvmExecutor

    reference, candidate = OrtExecutor(root / ONNX_FILE), TvmExecutor(root / lib, device=device, params=params)
    names = manifest.output_names()
    rows = []
    for case in range(CHECK_CASES):
        arrays = list(random_inputs(manifest.inputs, dims, CHECK_SEED + case).values())
        want = dict(zip(names, reference.run(arrays)))
        rows += compare_outputs(want, dict(zip(names, candidate.run(arrays))), tolerance,
                                f"random{case}-vs-onnxruntime")
    record = stage_record(stage, rows, tolerance)
    logger.info("%s vs ONNX Runtime on %d random cases: %s", stage, CHECK_CASES,
                "pass" if record.passed else "FAIL")
    return record


__all__ = ["check_bucket", "tune_buckets"]
