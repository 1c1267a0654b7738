"""Parity fails closed: NaN/Inf where eager is finite, mismatched non-finite values, and zero cases."""

from __future__ import annotations

import numpy as np
import pytest

from forgeline.runtime.format import DEFAULT_TOLERANCE
from forgeline.runtime.parity import compare_outputs, stage_record


def _passed(want, got) -> bool:
    rows = compare_outputs({"y": np.array(want)}, {"y": np.array(got)}, DEFAULT_TOLERANCE, "case0")
    return rows[0].passed


@pytest.mark.parametrize("want,got,ok", [
    ([1.0, 2.0], [1.0, 2.0], True),
    ([1.0, 2.0], [np.nan, 2.0], False),          # NaN where eager is finite
    ([1.0, 2.0], [np.inf, 2.0], False),
    ([np.nan, 1.0], [5.0, 1.0], False),          # before: passed, as NaN - 5 is never "over" the bound
    ([np.nan, 1.0], [np.nan, 1.0], True),        # the same NaN in both is a match
    ([np.inf, 1.0], [-np.inf, 1.0], False),      # Inf of the other sign
    ([np.inf, 1.0], [np.inf, 1.0 + 5e-5], True),
    ([np.nan, 1.0], [np.nan, 1.5], False),       # finite elements still held to the tolerance
])
def test_non_finite_values_fail_closed(want, got, ok):
    assert _passed(want, got) is ok


def test_zero_compared_cases_is_a_failure():
    record = stage_record("tvm/cpu-x", [], DEFAULT_TOLERANCE)
    assert not record.passed and "no output was compared" in record.parity[0].note
