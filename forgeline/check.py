"""`check`: every stage of an artifact against eager PyTorch, on golden and fresh inputs.

The eager model is rebuilt from the artifact's own checkpoint and run now, on this machine, on
the golden inputs and on fresh random ones: nothing is read back from what the manifest or
golden.npz recorded at build time. Every stage is checked: the stored golden outputs themselves
(what the torch-free ``selfcheck`` relies on), ONNX Runtime, each TVM build this host can run
(with its KV-cache graphs), and each tuned bucket build at its own shape.

A model from outside the registry has no checkpoint to rerun. For an ONNX file the reference,
ONNX Runtime on the artifact's copy of the file, is rerun now, on fresh inputs too. For a module
handed to ``forgeline.build`` the reference is eager PyTorch as it ran at build time: every stage is
compared with the stored golden outputs, and the report says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from forgeline.define import ForgelineModel, load_checkpoint
from forgeline.export.eager import golden_dims, make_case, run_eager
from forgeline.runtime import progress
from forgeline.runtime.errors import ArtifactError
from forgeline.runtime.format import GOLDEN_FILE, TVM_DIR, WEIGHTS_FILE, Manifest, StageRecord
from forgeline.runtime.golden import GoldenCase, load_golden
from forgeline.runtime.host import can_run, describe_host
from forgeline.runtime.kv_check import checked_stage
from forgeline.runtime.memory import release_freed_memory
from forgeline.runtime.model import Model, load, open_model, verified_manifest
from forgeline.runtime.parity import compare_outputs, stage_record

log = logging.getLogger(__name__)

FRESH_SEED = 1_000  # fresh inputs use seeds the golden cases never use
BUCKET_SEED = 3_000  # bucket cases: seeds neither the golden nor the fresh cases use
BUCKET_CASES = 2  # random input sets per tuned bucket


@dataclass
class CheckReport:
    stages: list[StageRecord]
    skipped: dict[str, str] = field(default_factory=dict)  # stage -> why it was not run here
    reference: str = "eager PyTorch"  # what every stage was compared with (format.SOURCE_REFERENCES)
    note: str = ""  # how the reference was obtained, when it was not rerun in full

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.stages)


def check_artifact(path: str | Path, fresh_cases: int = 2, verify_key=None) -> CheckReport:
    """Compare the golden outputs, ONNX Runtime, every TVM build this host can run and their buckets
    with eager PyTorch run now.

    ``verify_key`` (a PEM public key or its path): the artifact must carry a valid signature by it.
    """
    root = Path(path)
    manifest = verified_manifest(root, verify_key)  # signature, paths, hashes first
    eager = None
    with progress.stage("check ONNX Runtime vs eager on fresh inputs"):
        if manifest.source == "registry":
            # Eager PyTorch runs first, and its weights are freed before ONNX Runtime loads its own.
            eager = load_checkpoint(root / WEIGHTS_FILE).eval()
            cases, stored = _registry_cases(root, manifest, eager, fresh_cases)
            if not any(build.buckets for build in manifest.builds.values()):
                eager = None  # only bucket checks run it again
                release_freed_memory()
            with open_model(root, manifest, backend="ort") as ort_model:
                report = CheckReport(stages=[stored, _stage(ort_model, cases)])
        else:
            with open_model(root, manifest, backend="ort") as ort_model:
                cases, report = _outside_registry(root, ort_model, fresh_cases)
    release_freed_memory()
    host = describe_host()
    for tag, build in manifest.builds.items():
        runnable, why = can_run(build.requires, host)
        if build.codegen_only or not runnable:
            report.skipped[f"{TVM_DIR}/{tag}"] = why or build.note
            continue
        with (progress.stage(f"check {tag} vs eager on fresh inputs"),
              load(root, backend="tvm", target=tag, verify_key=verify_key) as model):
            report.stages.append(_stage(model, cases))
            for key, bucket in build.buckets.items():
                report.stages.append(_bucket_stage(model, key, bucket["dims"], _bucket_reference(root, eager)))
    if manifest.source == "module" and any(b.buckets for b in manifest.builds.values()):
        report.note += ("; a tuned bucket's shape has no stored outputs, so its rows compare with ONNX Runtime, "
                        "which matched them")
    return report


def _registry_cases(root: Path, manifest: Manifest, eager: ForgelineModel,
                    fresh_cases: int) -> tuple[list[GoldenCase], StageRecord]:
    """Eager PyTorch rerun from the checkpoint on the golden and fresh inputs; the stored outputs
    against it."""
    tolerance = manifest.tolerance
    golden = load_golden(root / GOLDEN_FILE)
    cases = _cases(golden, eager, fresh_cases)
    # The stored golden outputs are what `selfcheck` compares with where there is no torch:
    # they must still be what eager computes.
    stored = [row for kept, now in zip(golden, cases)
              for row in compare_outputs(now.outputs, kept.outputs, tolerance, kept.name)]
    return cases, stage_record(GOLDEN_FILE, stored, tolerance)


def _outside_registry(root: Path, ort_model: Model, fresh_cases: int) -> tuple[list[GoldenCase], CheckReport]:
    """The cases and the first stages of a module's or an ONNX file's artifact (see the module doc)."""
    manifest = ort_model.manifest
    golden = load_golden(root / GOLDEN_FILE)
    report = CheckReport(stages=[_stage(ort_model, golden)], reference=manifest.reference)
    if manifest.source == "module":
        report.note = ("a module is not in the registry, so eager PyTorch cannot be rerun: every stage is "
                       "compared with the outputs it gave at build time, stored in golden.npz")
        return golden, report
    from forgeline.export.onnx_source import case_shapes
    from forgeline.runtime.inputs import random_inputs

    # ONNX Runtime on the file is the reference: its run above checked the stored outputs; fresh
    # inputs at other shapes get its outputs now.
    report.stages[0].stage = GOLDEN_FILE
    fresh = [random_inputs(manifest.inputs, sizes, FRESH_SEED + i)
             for i, sizes in enumerate(case_shapes(manifest.inputs, 2, fresh_cases, manifest.dim_limits))]
    cases = golden + [GoldenCase(f"fresh{i}", arrays, ort_model.run(**arrays)) for i, arrays in enumerate(fresh)]
    report.note = "ONNX Runtime on the artifact's copy of the file, rerun now on the golden and fresh inputs"
    return cases, report


def _stage(model: Model, cases: list[GoldenCase]) -> StageRecord:
    """A backend on every case, plus its KV-cache graphs against the first case's logits."""
    return checked_stage(model, cases)


def _bucket_reference(root: Path, eager: ForgelineModel | None):
    """Cases at a bucket's shape: eager PyTorch rerun, or, outside the registry, ONNX Runtime (which
    the golden outputs already hold to the reference)."""
    if eager is not None:
        return lambda dims, seed, name: make_case(eager, dims, seed, name)
    from forgeline.runtime.inputs import random_inputs

    def ort_case(dims: dict[str, int], seed: int, name: str) -> GoldenCase:
        with load(root, backend="ort") as ort_model:
            arrays = random_inputs(ort_model.manifest.inputs, dims, seed)
            return GoldenCase(name, arrays, ort_model.run(**arrays))

    return ort_case


def _bucket_stage(model: Model, key: str, dims: dict[str, int], reference) -> StageRecord:
    """A tuned bucket build on fresh reference cases at exactly its shape (so it, not the fallback, serves),
    within the build's tolerance (its precision's for a bf16 or int8 build)."""
    rows = []
    for i in range(BUCKET_CASES):
        case = reference(dims, BUCKET_SEED + i, f"bucket{i}")
        got = model.run(**case.inputs)
        if model.last_build != key:
            raise ArtifactError(f"bucket {key} of {model.build.tag} did not serve a call at its own shape "
                                f"{dims} (the {model.last_build} build did); the manifest's bucket record is wrong.")
        rows += compare_outputs(case.outputs, got, model.tolerance, case.name)
    return stage_record(f"{model.stage}/{key}", rows, model.tolerance)


def _cases(golden: list[GoldenCase], eager: ForgelineModel, fresh_cases: int) -> list[GoldenCase]:
    """The golden inputs and fresh random ones, each with eager PyTorch's outputs computed now."""
    cases = [GoldenCase(case.name, case.inputs, run_eager(eager, case.inputs)) for case in golden]
    start = len(cases)
    for i in range(start, start + fresh_cases):
        cases.append(make_case(eager, golden_dims(eager, i), FRESH_SEED + i, f"fresh{i - start}"))
    log.info("checking on %d golden and %d fresh cases, eager PyTorch rerun on all", start, fresh_cases)
    return cases
