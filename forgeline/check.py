"""`check`: every stage of an artifact against eager PyTorch, on golden and fresh inputs.

The eager model is rebuilt from the artifact's own checkpoint, so the comparison is made now, on
this machine, and not read back from what the manifest recorded at build time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from forgeline.define import load_checkpoint
from forgeline.export.eager import golden_dims, make_case
from forgeline.runtime.format import GOLDEN_FILE, WEIGHTS_FILE, Manifest, StageRecord
from forgeline.runtime.golden import GoldenCase, load_golden
from forgeline.runtime.host import can_run, describe_host
from forgeline.runtime.kv_check import with_generation_rows
from forgeline.runtime.model import load

log = logging.getLogger(__name__)

FRESH_SEED = 1_000  # fresh inputs use seeds the golden cases never use


@dataclass
class CheckReport:
    stages: list[StageRecord]
    skipped: dict[str, str] = field(default_factory=dict)  # stage -> why it was not run here

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.stages)


def check_artifact(path: str | Path, fresh_cases: int = 2, verify_key=None) -> CheckReport:
    """Compare ONNX Runtime and every TVM build this host can run with eager PyTorch.

    ``verify_key`` (a PEM public key or its path): the artifact must carry a valid signature by it.
    """
    root = Path(path)
    with load(root, backend="ort", verify_key=verify_key) as ort_model:  # signature, paths, hashes first
        manifest = ort_model.manifest
        cases = _cases(root, manifest, fresh_cases)
        report = CheckReport(stages=[_stage(ort_model, cases)])
    host = describe_host()
    for tag, build in manifest.builds.items():
        runnable, why = can_run(build.requires, host)
        if build.codegen_only or not runnable:
            report.skipped[f"tvm/{tag}"] = why or build.note
            continue
        with load(root, backend="tvm", target=tag, verify_key=verify_key) as model:
            report.stages.append(_stage(model, cases))
    return report


def _stage(model, cases: list[GoldenCase]) -> StageRecord:
    """A backend on every case, plus its KV-cache graphs against the golden logits."""
    return with_generation_rows(model.selfcheck(cases), model)


def _cases(root: Path, manifest: Manifest, fresh_cases: int) -> list[GoldenCase]:
    """The golden cases as stored, plus fresh random ones computed by eager PyTorch now."""
    cases = load_golden(root / GOLDEN_FILE)
    model = load_checkpoint(root / WEIGHTS_FILE)
    start = len(cases)
    for i in range(start, start + fresh_cases):
        cases.append(make_case(model, golden_dims(model, i), FRESH_SEED + i, f"fresh{i - start}"))
    log.info("checking on %d golden and %d fresh cases", start, fresh_cases)
    return cases
