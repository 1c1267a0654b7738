"""The export stage fails when ONNX Runtime misses eager PyTorch, and leaves nothing half-written."""

from __future__ import annotations

import pytest

from forgeline.export import ExportOptions, export_model
from forgeline.runtime.errors import ParityError
from forgeline.runtime.format import Tolerance


def test_export_raises_when_onnx_runtime_misses_eager_and_writes_nothing(tmp_path):
    # A zero tolerance: ORT's fp32 kernels sum in another order than PyTorch's, so some logit
    # differs in its last bits and the stage must fail (as a real mismatch would at 1e-4).
    out = tmp_path / "gpt"
    with pytest.raises(ParityError, match="logits"):
        export_model("gpt", out, ExportOptions(tolerance=Tolerance(atol=0.0, rtol=0.0), generation_graphs=False))
    assert not out.exists() and list(tmp_path.iterdir()) == []  # the staged bundle is gone too
