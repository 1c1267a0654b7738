"""Cold start in a fresh process: `import forgeline.runtime; load(artifact).run(...)` imports
numpy and the one backend it runs, nothing heavy (forgeline/bench/cold_start.py's probe)."""

from __future__ import annotations

import pytest

from forgeline.bench.cold_start import probe


@pytest.mark.parametrize("backend, allowed", [("tvm", set()), ("ort", {"onnxruntime"})])
def test_first_run_imports_only_its_backend(tiny_artifact, backend, allowed):
    import torch  # noqa: F401  (a hard dependency: the check means most where torch, ml_dtypes and onnx are installed)
    report = probe(tiny_artifact("gpt"), backend)
    assert set(report["heavy"]) == allowed, report["heavy"]
    assert 0 < report["run_s"] < report["total_s"] and report["cpu_s"] > 0
