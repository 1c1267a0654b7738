"""The precision peers of the benchmarks: ORT int8, top-1 agreement beside latency, the accuracy
table's counts, and the reduced precisions the scripts build."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from forgeline.bench import BenchOptions, bench_artifact
from forgeline.bench.peer_runners import quantized_onnx
from forgeline.bench.precisions import parse_precisions
from forgeline.compile.precision import PRECISIONS
from forgeline.runtime.errors import ConfigError



def test_scripts_build_every_reduced_cpu_precision_forgeline_has():
    assert parse_precisions("auto") == [p for p in PRECISIONS if p not in ("fp32", "fp16")]
    assert "bf16" in parse_precisions("auto")
    with pytest.raises(ConfigError, match="unknown precision"):
        parse_precisions("bf16,int3")


@pytest.mark.parametrize("name", ["gpt", "bert"])  # bert: Gemm heads, which quantize_dynamic rewrites
def test_ort_int8_peer_is_quantize_dynamic(tiny_artifact, tmp_path, name):
    path = quantized_onnx(tiny_artifact(name), tmp_path)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops  # int8 weights, activations per call


def test_bench_prints_top1_agreement_with_eager_beside_latency(tiny_artifact):
    options = BenchOptions(backends=("ort", "ort-int8", "tvm"), batch=1, seq=8, iters=1, warmup=0)
    report = bench_artifact(tiny_artifact("gpt"), options)
    assert report.result("ort").top1_agreement == 1.0  # fp32 ORT picks eager's argmax everywhere
    assert report.result("tvm").top1_agreement == 1.0
    int8 = report.result("ort-int8")
    assert int8.available and 0.0 <= int8.top1_agreement <= 1.0


def test_accuracy_table_counts_routing_flips_and_top1_misses(bench_script):
    acc = bench_script("precision_accuracy")
    logits = np.array([[[0.0, 1.0], [2.0, 0.0]]], np.float32)  # (1, 2, 2): argmax 1, 0
    routing = np.array([[1, 0, 1]], np.int64)
    case = SimpleNamespace(inputs={}, outputs={"logits": logits, "routing.0": routing})
    flipped = routing.copy()
    flipped[0, 2] = 0
    moved = logits.copy()
    moved[0, 1] = [0.0, 3.0]  # the second position's argmax moves, by 3.0

    row = acc.compare([case], lambda inputs: {"logits": moved, "routing.0": flipped})
    assert (row["routing_flips"], row["routing_decisions"]) == (1, 3)
    assert row["top1"] == 0.5 and row["max_abs"] == 3.0
    assert "1 of 3" in acc.markdown({"m": {"b": row}}, 8)
