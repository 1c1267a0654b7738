"""Compare a backend's outputs with eager PyTorch's: names, then shapes, then values.

Every failure is gathered before anything is raised, so one report shows all of them. Routing
outputs (``routing.*``) are compared exactly: in an fp32 build a token routed to another expert is
a failure, not noise.

A reduced-precision build (bf16, int8) may move a routing decision: rounding before the fp32
router shifts a score that sat near a tie. Then a different expert ran for that token, and every
output of that case downstream of it (all of them, once attention mixes the tokens) is no longer
comparable with eager fp32. ``stage_record`` with a ``routing_bound`` therefore:

- counts the flipped decisions over every case and reports them in a summary row
  (``ROUTING_SUMMARY``), kept in the manifest and printed by ``forgeline check``;
- reports the other outputs of a case with a flip (max abs) without holding them to the
  tolerance, and holds every flip-free case to it as before. In a decoder (``causal``) the
  positions before a case's first flip cannot depend on it, and are held to the tolerance;
- fails the stage when the flipped share exceeds the bound, or when nothing is flip-free (no
  case, and no positions before a decoder's first flip).
"""

from __future__ import annotations

import numpy as np

from .errors import ParityError
from .format import ROUTING_PREFIX, OutputParity, StageRecord, Tolerance

ROUTING_SUMMARY = "routing (all)"  # the stage row that counts every routing flip of a reduced-precision build


def compare_outputs(
    expected: dict[str, np.ndarray],
    actual: dict[str, np.ndarray],
    tolerance: Tolerance,
    case: str,
    *,
    routing_flips_fail: bool = True,
    causal: bool = False,
) -> list[OutputParity]:
    """One OutputParity per expected output; missing or extra names become failed rows.

    ``routing_flips_fail=False`` (reduced-precision builds) still counts every routing decision
    that differs from eager fp32 (``frac_over`` is how often) but records it, not fails on it.
    ``causal`` (a decoder, whose routing groups are the tokens of one position: define/moe.py):
    where a decision flipped at position t, nothing at positions before t can depend on it, so
    the per-token outputs at those positions get rows of their own (case ``<case>[:t]``), held
    to the tolerance even though the case as a whole is not (``stage_record``).
    """
    rows = _compare_all(expected, actual, tolerance, case, routing_flips_fail)
    first = _first_flip(expected, actual) if causal and not routing_flips_fail else None
    if first:
        rows += _before_flip(expected, actual, tolerance, case, first)
    return rows


def _first_flip(expected, actual) -> int | None:
    """The earliest position (axis 1 of the (B, T, E) routing outputs) with a flipped decision."""
    positions = []
    for name, want in expected.items():
        got = actual.get(name)
        if name.startswith(ROUTING_PREFIX) and got is not None and np.shape(got) == want.shape and want.ndim == 3:
            positions += list(np.nonzero(np.asarray(got) != want)[1])
    return int(min(positions)) if positions else None


def _before_flip(expected, actual, tolerance: Tolerance, case: str, first: int) -> list[OutputParity]:
    """Rows for the per-token outputs (leading dims the routing's (B, T)) at positions < ``first``."""
    lead = next(want.shape[:2] for name, want in expected.items() if name.startswith(ROUTING_PREFIX))
    rows = []
    for name, want in expected.items():
        got = actual.get(name)
        if (name.startswith(ROUTING_PREFIX) or got is None or want.ndim < 2 or want.shape[:2] != lead
                or np.shape(got) != want.shape or not np.issubdtype(want.dtype, np.floating)):
            continue
        rows.append(_compare_values(name, f"{case}[:{first}]", want[:, :first], np.asarray(got)[:, :first],
                                    tolerance))
    return rows


def _compare_all(expected, actual, tolerance: Tolerance, case: str, routing_flips_fail: bool) -> list[OutputParity]:
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
    decisions = int(want.size) if name.startswith(ROUTING_PREFIX) else 0
    return OutputParity(name, case, max_abs, max_rel, frac_over, recorded_only or not over.any(),
                        exact, note, decisions)


def _failed(name: str, case: str, note: str) -> OutputParity:
    return OutputParity(name, case, float("nan"), float("nan"), 1.0, False, note=note)


def stage_record(stage: str, rows: list[OutputParity], tolerance: Tolerance,
                 routing_bound: float | None = None) -> StageRecord:
    """A stage passes only when it compared something and every row passed: zero cases fail closed.

    ``routing_bound`` (a reduced-precision build: format.routing_flip_bound) applies the routing
    flip policy of the module doc; None (fp32, ONNX Runtime) leaves every row as compared.
    """
    if not rows:
        rows = [_failed("(none)", "(none)", "no output was compared: the golden file holds no cases")]
    if routing_bound is not None:
        rows = _routing_policy([r for r in rows if r.output != ROUTING_SUMMARY], routing_bound)
    return StageRecord(stage=stage, passed=all(r.passed for r in rows), tolerance=tolerance, parity=rows)


def routing_flips(rows: list[OutputParity]) -> tuple[int, int, list[str], list[str]]:
    """(flipped decisions, decisions, every case with routing outputs, the cases with a flip)."""
    routing = [r for r in rows if r.output.startswith(ROUTING_PREFIX) and r.decisions]
    flips = sum(round(r.frac_over * r.decisions) for r in routing)
    cases = sorted({r.case for r in routing})
    flipped = sorted({r.case for r in routing if r.frac_over > 0})
    return flips, sum(r.decisions for r in routing), cases, flipped


def _routing_policy(rows: list[OutputParity], bound: float) -> list[OutputParity]:
    flips, decisions, cases, flipped = routing_flips(rows)
    if not decisions:
        return rows  # not an MoE model
    out = [_exempt(r) if _in_flipped_case(r, flipped) else r for r in rows]
    share = flips / decisions
    note = (f"{flips} of {decisions} routing decisions flipped ({share:.2%}; bound {bound:.2%}); "
            f"{len(flipped)} of {len(cases)} cases had a flip"
            + (f" ({', '.join(flipped)}: their other outputs reported, not held to the tolerance)"
               if flipped else ""))
    prefixes = sorted({r.case for r in rows if "[:" in r.case})  # the positions before a flip (causal)
    if prefixes:
        note += f"; held to the tolerance before the first flip: {', '.join(prefixes)}"
    passed = share <= bound and len(flipped) < len(cases) + len(prefixes)
    if not passed:
        why = ("more flips than the bound allows" if share > bound
               else "no case, nor any position before a flip, is free of flips")
        note += f": {why}"
    out.append(OutputParity(ROUTING_SUMMARY, "(all cases)", share, share, share, passed, True, note, decisions))
    return out


def routing_note(record: StageRecord) -> str:
    """The routing flip summary of a reduced-precision stage ("" for any other)."""
    return next((r.note for r in record.parity if r.output == ROUTING_SUMMARY), "")


def _in_flipped_case(row: OutputParity, flipped: list[str]) -> bool:
    """A non-routing row of a case with a flip (its generation-graph rows, "<case>/generation", too)."""
    if row.output.startswith(ROUTING_PREFIX) or row.output == ROUTING_SUMMARY:
        return False
    return row.case in flipped or row.case.split("/")[0] in flipped


def _exempt(row: OutputParity) -> OutputParity:
    """A value row of a flipped case: reported, not held to the tolerance. Rows that failed for
    another reason (missing, wrong shape, NaN: max abs NaN) still fail."""
    if row.passed or row.max_abs != row.max_abs or row.max_abs == float("inf"):
        return row
    note = "not held to the tolerance: a routing decision flipped in this case, so a different expert ran"
    return OutputParity(row.output, row.case, row.max_abs, row.max_rel, row.frac_over, True, row.exact,
                        note, row.decisions)


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
