"""Reduced-precision parity: routing flips counted and recorded; the build's own tolerance used."""

from __future__ import annotations

import numpy as np

from forgeline.runtime.format import BuildRecord, Tolerance, precision_tolerance
from forgeline.runtime.parity import compare_outputs

TOL = Tolerance(atol=1e-4, rtol=1e-3)


def _routing_case():
    want = {"routing.0": np.array([[0, 1, 1, 0]] * 5, np.int64)}  # (T, E): 20 decisions
    got = {"routing.0": want["routing.0"].copy()}
    got["routing.0"][2, :2] = [1, 0]  # one token taken by another expert: 2 decisions differ
    return want, got


def test_routing_flip_fails_fp32_builds():
    want, got = _routing_case()
    (row,) = compare_outputs(want, got, TOL, "case0")
    assert not row.passed and row.frac_over == 2 / 20 and "2 routing decisions differ" in row.note


def test_routing_flip_is_recorded_with_its_rate_for_reduced_precision():
    want, got = _routing_case()
    (row,) = compare_outputs(want, got, TOL, "case0", routing_flips_fail=False)
    assert row.passed and row.frac_over == 2 / 20 and "recorded, not failed" in row.note


def test_reduced_precision_still_fails_values_beyond_its_tolerance():
    tol = precision_tolerance("bf16")
    want = {"logits": np.ones((2, 3), np.float32)}
    near = {"logits": want["logits"] + 0.5 * (tol.atol + tol.rtol)}  # inside atol + rtol*|1|
    far = {"logits": want["logits"] + 2 * (tol.atol + tol.rtol)}
    assert compare_outputs(want, near, tol, "c", routing_flips_fail=False)[0].passed
    assert not compare_outputs(want, far, tol, "c", routing_flips_fail=False)[0].passed


def test_build_record_carries_its_tolerance():
    tol = precision_tolerance("bf16")
    build = BuildRecord(tag="t", kind="llvm", target={}, requires={}, lib="x.so",
                        precision="bf16", tolerance={"atol": tol.atol, "rtol": tol.rtol})
    assert build.parity_tolerance == tol
    assert BuildRecord(tag="t", kind="llvm", target={}, requires={}, lib="x.so").parity_tolerance is None
