"""Cold start of the light runtime: fresh processes that import it, load an artifact, run once.

For a tiny and a small artifact (gpt-moe tiny and gpt small by default, exported and compiled
into a temporary folder unless given), on the TVM and ONNX Runtime backends: the median over
``--runs`` fresh processes, interleaved (one of each per round), of the wall time split into
import / load / first run, and of the process' CPU time, which a shared machine disturbs far
less than the wall time. ``--compare-python`` adds the same probes run by another interpreter
(say another checkout's venv) for a before/after in one run. Writes
``benchmarks/results/cold_start-<host>-fp32-<date>.json``.

    python benchmarks/cold_start.py [--runs 7] [--tiny DIR --small DIR] [--compare-python PY]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

from result_names import RESULTS_DIR, result_stem  # benchmarks/ is on sys.path when a script runs
FIELDS = ("import_s", "load_s", "run_s", "total_s", "cpu_s")


def build(name: str, preset: str, out: Path) -> Path:
    from forgeline.compile import compile_artifact
    from forgeline.export import ExportOptions, export_model

    export_model(name, out, ExportOptions(preset=preset, overwrite=True, generation_graphs=False))
    compile_artifact(out)
    return out


def measure(artifacts: dict[str, Path], runs: int, compare: str | None) -> list[dict]:
    from forgeline.bench.cold_start import probe

    pythons = {"": None} | ({" (compared)": compare} if compare else {})
    cases = [(size, backend, label) for size in artifacts for backend in ("tvm", "ort") for label in pythons]
    samples: dict[tuple, list[dict]] = {case: [] for case in cases}
    for round_index in range(runs):  # interleaved: each round runs every case once
        for case in cases:
            size, backend, label = case
            samples[case].append(probe(artifacts[size], backend, python=pythons[label]))
        logging.info("round %d/%d done", round_index + 1, runs)
    rows = []
    for (size, backend, label), got in samples.items():
        row = {"artifact": size, "backend": backend + label, "runs": runs,
               **{f: statistics.median(s[f] for s in got) for f in FIELDS}, "heavy_imports": got[0]["heavy"]}
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    print("| artifact | backend | total s | import s | load s | first run s | CPU s | heavy imports |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['artifact']} | {r['backend']} | {r['total_s']:.3f} | {r['import_s']:.3f} | {r['load_s']:.3f} | "
              f"{r['run_s']:.3f} | {r['cpu_s']:.3f} | {', '.join(r['heavy_imports']) or 'none'} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7, help="fresh processes per artifact and backend")
    p.add_argument("--tiny", type=Path, help="a tiny artifact (default: build gpt-moe tiny)")
    p.add_argument("--small", type=Path, help="a small artifact (default: build gpt small)")
    p.add_argument("--compare-python", help="another interpreter to probe beside this one")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / f"{result_stem('cold_start')}.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    with tempfile.TemporaryDirectory(prefix="forgeline-cold-") as tmp:
        artifacts = {"gpt-moe tiny": args.tiny or build("gpt-moe", "tiny", Path(tmp) / "tiny"),
                     "gpt small": args.small or build("gpt", "small", Path(tmp) / "small")}
        rows = measure(artifacts, args.runs, args.compare_python)
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
