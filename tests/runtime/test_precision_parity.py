"""Reduced-precision parity: routing flips counted and recorded; the build's own tolerance used."""

from __future__ import annotations

import numpy as np
import pytest

from forgeline.runtime.errors import ParityError
from forgeline.runtime.format import BuildRecord, Tolerance, precision_tolerance
from forgeline.runtime.parity import ROUTING_SUMMARY, compare_outputs, raise_if_failed, routing_note, stage_record

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


def _cases(flipped: set[str], logits_error: float, names=("case0", "case1")):
    """Rows of a reduced-precision stage: per case a (T, E) routing output with 20 decisions, one
    token moved to another expert in the ``flipped`` cases, and logits off by ``logits_error``."""
    rows = []
    for name in names:
        want, got = _routing_case()
        if name not in flipped:
            got = {k: v.copy() for k, v in want.items()}
        logits = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
        want["logits"], got["logits"] = logits, logits + np.float32(logits_error)
        rows += compare_outputs(want, got, TOL, name, routing_flips_fail=False)
    return rows


def test_a_flipped_case_is_reported_not_held_to_the_tolerance():
    rows = _cases({"case0"}, 0.0) + [r for r in _cases({"case0"}, 1.0) if r.case == "case0" and r.output == "logits"]
    record = stage_record("tvm/x", rows, TOL, routing_bound=0.25)
    assert record.passed
    exempt = [r for r in record.parity if r.output == "logits" and r.max_abs > 0.5]
    assert exempt and all(r.passed and "routing decision flipped" in r.note for r in exempt)
    assert "2 of 40 routing decisions flipped (5.00%; bound 25.00%); 1 of 2 cases" in routing_note(record)


def test_flip_free_cases_are_still_held_to_the_tolerance():
    rows = _cases({"case0"}, 1.0)  # case1 has no flip and its logits are off
    record = stage_record("tvm/x", rows, TOL, routing_bound=0.25)
    assert not record.passed
    failed = [(r.output, r.case) for r in record.parity if not r.passed]
    assert failed == [("logits", "case1")]


def test_flips_over_the_bound_or_in_every_case_refuse_the_build():
    over = stage_record("tvm/x", _cases({"case0"}, 0.0), TOL, routing_bound=0.01)  # 5% > 1%
    assert not over.passed and "more flips than the bound allows" in routing_note(over)
    everywhere = stage_record("tvm/x", _cases({"case0", "case1"}, 0.0), TOL, routing_bound=0.5)
    assert not everywhere.passed and "no case, nor any position" in routing_note(everywhere)
    with pytest.raises(ParityError, match="routing decisions flipped"):
        raise_if_failed(over)


def test_fp32_stage_fails_on_any_flip_and_has_no_flip_summary():
    rows = [r for name in ("case0", "case1") for r in compare_outputs(*_routing_case(), TOL, name)]
    record = stage_record("tvm/x", rows, TOL)
    assert not record.passed and routing_note(record) == ""


def test_a_flipped_case_still_fails_on_nan_and_its_generation_rows_are_exempt():
    rows = _cases({"case0"}, 0.0)
    nan = {"logits": np.array([np.nan], np.float32)}
    rows += compare_outputs({"logits": np.zeros(1, np.float32)}, nan, TOL, "case0/generation")
    rows += compare_outputs({"logits": np.zeros(1, np.float32)}, {"logits": np.ones(1, np.float32)}, TOL,
                            "case0/generation")
    record = stage_record("tvm/x", rows, TOL, routing_bound=0.25)
    generation = [r for r in record.parity if r.case == "case0/generation"]
    assert [r.passed for r in generation] == [False, True]
    # recomputing the record (generation rows added later) keeps one summary row
    again = stage_record("tvm/x", record.parity, TOL, routing_bound=0.25)
    assert sum(r.output == ROUTING_SUMMARY for r in again.parity) == 1


def test_a_decoder_holds_the_positions_before_the_first_flip_to_the_tolerance():
    """Causal: logits at positions before the first flipped token are comparable; after it not."""
    want = {"routing.0": np.zeros((2, 6, 4), np.int64), "logits": np.zeros((2, 6, 3), np.float32)}
    got = {k: v.copy() for k, v in want.items()}
    got["routing.0"][1, 4, 0] = 1  # a decision at position 4 of row 1
    got["logits"][:, 4:] += 1.0  # every row from position 4 on differs: a different expert ran
    rows = compare_outputs(want, got, TOL, "case0", routing_flips_fail=False, causal=True)
    (prefix,) = [r for r in rows if r.case == "case0[:4]"]
    assert prefix.output == "logits" and prefix.passed and prefix.max_abs == 0.0
    record = stage_record("tvm/x", rows, TOL, routing_bound=0.25)  # the only case flipped
    assert record.passed and "held to the tolerance before the first flip: case0[:4]" in routing_note(record)
    got["logits"][:, 1] += 1.0  # now a position before the flip is wrong: that fails
    rows = compare_outputs(want, got, TOL, "case0", routing_flips_fail=False, causal=True)
    assert not stage_record("tvm/x", rows, TOL, routing_bound=0.25).passed
    got["routing.0"][0, 0, 0] = 1  # a flip at position 0: nothing before it, nothing flip-free
    rows = compare_outputs(want, got, TOL, "case0", routing_flips_fail=False, causal=True)
    assert "nor any position before a flip" in routing_note(stage_record("tvm/x", rows, TOL, routing_bound=0.25))
