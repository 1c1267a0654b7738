"""benchmarks/peers.py --repeat: each run's ratio to the peer and their median, by hand."""

from __future__ import annotations

import pytest

from forgeline.bench.peer_report import PeerReport, PeerResult, repeated_ratios, repeated_table


def _report(batch: int, times: dict[str, float | None]) -> PeerReport:
    results = [PeerResult(name, ms is not None, p50_ms=ms) for name, ms in times.items()]
    return PeerReport("a", "gpt", "small", batch, 128, {}, "", {}, results)


def test_each_runs_ratio_and_the_median_match_a_hand_calculation():
    reports = [_report(1, {"openvino": 5.0, "tvm-bf16": 4.0, "ort-int8": 6.0, "tvm-int8": 3.0}),
               _report(1, {"openvino": 4.0, "tvm-bf16": 4.0, "ort-int8": 6.0, "tvm-int8": 3.6}),
               _report(1, {"openvino": 8.0, "tvm-bf16": 4.0, "ort-int8": 5.0, "tvm-int8": None}),
               _report(8, {"openvino": 50.0, "tvm-bf16": 30.0})]
    rows = {(r["shape"], r["backend"]): r for r in repeated_ratios(reports)}
    # 1x128 bf16: 4/5, 4/4, 4/8 -> 0.8, 1.0, 0.5, median 0.8; int8: 3/6, 3.6/6 (the third did not run)
    assert rows["1x128", "tvm-bf16"]["ratios"] == pytest.approx([0.8, 1.0, 0.5])
    assert rows["1x128", "tvm-bf16"]["median"] == pytest.approx(0.8)
    assert rows["1x128", "tvm-int8"]["ratios"] == pytest.approx([0.5, 0.6])
    assert rows["1x128", "tvm-int8"]["median"] == pytest.approx(0.55)
    assert rows["8x128", "tvm-bf16"]["ratios"] == pytest.approx([0.6])
    assert ("8x128", "tvm-int8") not in rows  # neither side ran
    assert "| 1x128 | tvm-bf16 | openvino | 0.80, 1.00, 0.50 | 0.80 |" in repeated_table(list(rows.values()))
