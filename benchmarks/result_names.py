"""Names of benchmark result files: what was measured, on which host, at which precision, when.

``result_stem("moe_scaling")`` -> ``moe_scaling-znver5-fp32-2026-12-03``; peers add the model and
preset (``peers-gpt-small-znver3-fp32-2026-12-03``). The host is LLVM's name for this CPU, as the
artifact's build tag uses it, and the date is UTC. docs/benchmarks.md quotes these files by name.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def result_stem(what: str, precision: str | None = "fp32", *, host: str | None = None,
                when: datetime | None = None, folder: Path | None = RESULTS_DIR) -> str:
    """``what-host[-precision]-YYYY-MM-DD``; ``host`` defaults to this machine's LLVM CPU name.

    Where ``folder`` already holds a result of that name (an earlier run the same day), the time
    is added, ``…-YYYY-MM-DDTHHMM``, so that a run never overwrites another's results.
    """
    if host is None:
        from forgeline.compile.targets import host_cpu_name

        host = host_cpu_name()
    now = when or datetime.now(timezone.utc)
    stem = "-".join([what, host, *([precision] if precision else []), now.strftime("%Y-%m-%d")])
    if folder is not None and any(Path(folder).glob(f"{stem}.*")):
        stem += now.strftime("T%H%M")
    return stem
