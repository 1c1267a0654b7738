"""benchmarks/gpu_check.py without a GPU: its table and its refusal (the dry run builds for real)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_has_a_row_per_model_and_shape_with_the_ort_ratio(gpu_check):
    rows = [{"model": "gpt", "parity_text": "pass", "timings": [
                {"shape": "1x128", "ms": {"tvm": 1.5, "ort-cuda": 3.0, "eager": 4.0}},
                {"shape": "8x512", "ms": {"tvm": 9.0}}],
             "decode_tokens_per_s": {"tvm": 812.4, "ort": 400.0}},
            {"model": "bert", "parity_text": "not run (dry run)"}]
    text = gpu_check.table(rows, "header")
    lines = text.splitlines()
    assert lines[0] == "header"
    row = next(line for line in lines if line.startswith("| gpt | 1x128 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "1.500" and cells[5] == "3.000" and cells[-2] == "0.50"  # 1.5 / 3.0
    assert "| gpt | 8x512 |" in text and "n/a | pass |" in text
    assert "| bert | - |" in text
    assert "| gpt | 812 | 400 |" in text


def test_without_a_gpu_it_says_why_and_does_nothing(gpu_check, capsys):
    from forgeline.runtime.host import cuda_compute_capabilities

    if cuda_compute_capabilities():
        pytest.skip("this host has a GPU")
    assert gpu_check.main(["--models", "gpt"]) == 0
    assert "libcuda.so.1" in capsys.readouterr().out
