"""Compare a backend's outputs with eager PyTorch's: names, then shapes, then values.

Every failure is gathered before anything is raised, so one report shows all of them. Routing
outputs (``routing.*``) are compared exactly: a token routed to another expert is a failure, not
noise.
"""

from __future__ import annotations

import numpy as np

from .errors import ParityError
from .format import ROUTING_PREFIX, OutputParity, StageRecord, Tolerance


def compare_outputs(
    expected: dict[str, np.ndarray],
    actual: dict[str, np.ndarray],
    tolerance: Tolerance,
    case: str,
    *,
    routing_flips_fail: bool = True,
) -> list[OutputParity]:
    """One OutputParity per expected output; missing or extra names become failed rows.

    ``routing_flips_fail=False`` (reduced-precision builds) still counts every routing decision
    that differs from eager fp32 (``frac_over`` is how often) but records it, not fails on it.
    """
    rows: list[OutputParity] = []
    for name in sorted(set(actual) - set(expected)):
        rows.append(_failed(name, case, "output not produced by eager PyTorch"))
    for name, want in expected.items():
        if name not in actual:
            rows.append(_failed(name, case, "output missing from backend"))
            continue
        got = np.asarray(actual[name])
        if got.shape != want.shape:
            rows.append(_failed(name, case, f"shape {got.shape} != expected {want.shape}"))
            continue
        rows.append(_compare_values(name, case, want, got, tolerance, routing_flips_fail))
    return rows


def _compare_values(name: str, case: str, want: np.ndarray, got: np.ndarray, tol: Tolerance,
                    routing_flips_fail: bool = True) -> OutputParity:
    exact = name.startswith(ROUTING_PREFIX) or not np.issubdtype(want.dtype, np.floating)
    want64 = want.astype(np.float64)
    got64 = got.astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf; such elements are judged apart below
        diff = np.abs(got64 - want64)
    if want.size == 0:
        return OutputParity(name, case, 0.0, 0.0, 0.0, True, exact)
    # Fail closed: NaN compares false with everything, so a NaN difference would never be "over"
    # the bound. A non-finite value must match exactly where eager has one, and is a failure
    # where eager is finite.
    finite = np.isfinite(want64)
    if not np.all(np.isfinite(got64[finite])):
        return _failed(name, case, "backend produced NaN or Inf where eager PyTorch is finite")
    if not np.array_equal(got64[~finite], want64[~finite], equal_nan=True):
        return _failed(name, case, "backend's NaN/Inf elements differ from eager PyTorch's")
    diff = np.where(finite, diff, 0.0)
    max_abs = float(np.max(diff))
    # Relative error is reported where it means something: on elements larger than atol. Below
    # that, atol governs, and a 1e-7 difference on a 1e-8 value would read as a huge ratio.
    big = np.abs(want64) > tol.atol
    max_rel = float(np.max(diff[big] / np.abs(want64[big]))) if big.any() else 0.0
    bound = 0.0 if exact else tol.atol + tol.rtol * np.where(finite, np.abs(want64), 0.0)
    over = diff > bound
    frac_over = float(over.mean())
    note = f"{int(over.sum())} routing decisions differ" if exact and over.any() else ""
    recorded_only = exact and name.startswith(ROUTING_PREFIX) and not routing_flips_fail
    if note and recorded_only:
        note += " (recorded, not failed: reduced precision)"
    return OutputParity(name, case, max_abs, max_rel, frac_over, recorded_only or not over.any(),
                        exact, note)


def _failed(name: str, case: str, note: str) -> OutputParity:
    return OutputParity(name, case, float("nan"), float("nan"), 1.0, False, note=note)


def stage_record(stage: str, rows: list[OutputParity], tolerance: Tolerance) -> StageRecord:
    """A stage passes only when it compared something and every row passed: zero cases fail closed."""
    if not rows:
        rows = [_failed("(none)", "(none)", "no output was compared: the golden file holds no cases")]
    return StageRecord(stage=stage, passed=all(r.passed for r in rows), tolerance=tolerance, parity=rows)


def raise_if_failed(record: StageRecord, reference: str = "eager PyTorch") -> None:
    """Raise one ParityError that lists every failing output of a stage against ``reference``."""
    if record.passed:
        return
    failures = [r for r in record.parity if not r.passed]
    details = "; ".join(
        f"{r.output} [{r.case}]: {r.note or f'max abs {r.max_abs:.3g}, max rel {r.max_rel:.3g}, {r.frac_over:.1%} over'}"
        for r in failures
    )
    recorded = [f"{r.output} [{r.case}]: {r.note}" for r in record.parity if r.passed and r.note]
    if recorded:  # a token routed to another expert carries other outputs: say so beside them
        details += "; also " + "; ".join(recorded)
    tol = record.tolerance
    raise ParityError(
        f"{record.stage} does not match {reference} within atol {tol.atol:g} / rtol {tol.rtol:g}: {details}."
    )


def summarize(record: StageRecord) -> dict[str, tuple[float, float, bool]]:
    """Worst max-abs / max-rel per output over all cases, and whether every case passed."""
    worst: dict[str, tuple[float, float, bool]] = {}
    for r in record.parity:
        prev = worst.get(r.output, (0.0, 0.0, True))
        worst[r.output] = (
            _nanmax(prev[0], r.max_abs),
            _nanmax(prev[1], r.max_rel),
            prev[2] and r.passed,
        )
    return worst


def _nanmax(a: float, b: float) -> float:
    if np.isnan(a) or np.isnan(b):
        return float("nan")
    return max(a, b)
