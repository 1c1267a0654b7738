"""Reproduce forgeline's CPU benchmark table in one run.

For gpt-small, bert-small and gpt-moe-small (expert choice) at batch 1, seq 128 by default:
export + compile (untuned, with forgeline's CPU defaults), optionally tune a bucket for the
benchmark shape, then time eager PyTorch, ONNX Runtime, TVM untuned and TVM tuned side by side
with ``forgeline.bench``. Prints a markdown table with the date and machine and writes
``benchmarks/results/run_benchmarks-<host>-fp32-<date>.json`` and ``.md``.

    python benchmarks/run_benchmarks.py                      # untuned, a few minutes on 2 cores
    python benchmarks/run_benchmarks.py --stock-tvm          # + TVM's stock pipeline (slow)
    python benchmarks/run_benchmarks.py --tune-minutes 10    # + a tuned bucket per model

The machine this runs on may be shared: read medians and ratios to ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("benchmarks")

MODELS = ("gpt", "bert", "gpt-moe")
from result_names import RESULTS_DIR, result_stem  # benchmarks/ is on sys.path when a script runs
SECONDS_PER_TRIAL = 0.6  # steady state per trial on 2 cores with compile/tuning/builder.py (measured 0.5-0.6)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--work-dir", type=Path, help="where artifacts go (default: a temp folder)")
    p.add_argument("--tune-minutes", type=float, default=0.0,
                   help="tune a bucket for batch x seq per model for about this long")
    p.add_argument("--stock-tvm", action="store_true",
                   help="also time TVM's stock CPU pipeline (no schedules; ~1 s per run)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    return p.parse_args(argv)


def build_artifact(name: str, preset: str, out: Path) -> float:
    """Export + compile ``name`` untuned into ``out``; returns the seconds it took."""
    from forgeline.compile import CompileOptions, compile_artifact
    from forgeline.export import ExportOptions, export_model

    started = time.perf_counter()
    export_model(name, out, ExportOptions(preset=preset, overwrite=True, generation_graphs=False))
    compile_artifact(out, CompileOptions(target="cpu"))
    return time.perf_counter() - started


def tune_artifact_for(out: Path, batch: int, seq: int, minutes: float) -> str:
    """Tune one bucket through forgeline.compile's tuning API when it exists; a note either way."""
    try:
        from forgeline.compile.tuning import TuneOptions, tune_artifact
    except ImportError:
        return "this forgeline has no tuning API (forgeline.compile.tuning)"
    from forgeline.runtime.format import Manifest
    from forgeline.runtime.model import select_build

    tag = select_build(Manifest.load(out), "cpu").tag
    trials = max(8, int(minutes * 60 / SECONDS_PER_TRIAL))
    tune_artifact(out, tag, TuneOptions(buckets=[{"batch": batch, "seq": seq}], trials=trials))
    return f"tuned {batch}x{seq} with {trials} trials"


def stock_tvm_ms(out: Path, batch: int, seq: int, iters: int = 3) -> float:
    """p50 latency of TVM's stock CPU pipeline (legalize + fuse, no schedules) on the model."""
    import numpy as np
    import tvm
    from tvm.target import Target

    from forgeline.bench import BenchOptions, bench_inputs
    from forgeline.compile.tvm_build import import_relax
    from forgeline.runtime.format import ONNX_FILE, Manifest
    from forgeline.runtime.model import select_build
    from forgeline.runtime.backends.tvm import TvmExecutor

    manifest = Manifest.load(out)
    target = Target(select_build(manifest, "cpu").target)
    executable = tvm.compile(import_relax(out / ONNX_FILE), target=target)
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "stock.so"
        executable.export_library(str(lib))
        executor = TvmExecutor(lib)
        inputs = bench_inputs(manifest, BenchOptions(batch=batch, seq=seq))
        ordered = [inputs[n] for n in manifest.input_names()]
        executor.run(ordered)
        samples = []
        for _ in range(iters):
            started = time.perf_counter()
            executor.run(ordered)
            samples.append((time.perf_counter() - started) * 1e3)
    return float(np.median(samples))


def bench_one(name: str, args: argparse.Namespace, work: Path) -> dict:
    from forgeline.bench import BenchOptions, bench_artifact, profile_tvm_kernels

    out = work / f"{name}-{args.preset}"
    log.info("== %s/%s: export + compile (untuned)", name, args.preset)
    entry: dict = {"model": name, "preset": args.preset, "build_seconds": build_artifact(
        name, args.preset, out)}
    entry["tuning"] = (tune_artifact_for(out, args.batch, args.seq, args.tune_minutes)
                       if args.tune_minutes > 0 else "not tuned (pass --tune-minutes)")
    # Eager PyTorch gets its own session beside ONNX Runtime: its OpenMP threads keep spinning
    # (and dense MoE allocates ~1 GB per pass) after each run, which slowed whichever backend
    # ran next by up to 1.6x when all four were interleaved.
    compiled = BenchOptions(backends=("ort", "tvm", "tvm-tuned"), batch=args.batch,
                            seq=args.seq, warmup=args.warmup, iters=args.iters)
    log.info("== %s: bench %s", name, ", ".join(compiled.backends))
    entry["report"] = bench_artifact(out, compiled).to_dict()
    eager = BenchOptions(backends=("eager", "ort"), batch=args.batch, seq=args.seq,
                         warmup=min(args.warmup, 2), iters=min(args.iters, 10))
    log.info("== %s: bench %s", name, ", ".join(eager.backends))
    entry["eager_report"] = bench_artifact(out, eager).to_dict()
    # The profile needs the VM's per-call hook: a build kept in bytecode beside the timed one.
    from forgeline.compile import CompileOptions, compile_artifact

    compile_artifact(out, CompileOptions(target="cpu", vm="bytecode"))
    entry["kernels"] = [vars(k) for k in profile_tvm_kernels(
        out, BenchOptions(batch=args.batch, seq=args.seq, warmup=2, iters=5))[:12]]
    if args.stock_tvm:
        log.info("== %s: TVM stock pipeline", name)
        entry["stock_tvm_ms"] = stock_tvm_ms(out, args.batch, args.seq)
    return entry


def _cell(result: dict | None, key: str = "p50_ms") -> str:
    if not result or not result["available"]:
        return "n/a"
    return f"{result[key]:.2f}"


def markdown(results: dict) -> str:
    host = results["host"]
    lines = [f"# forgeline CPU benchmark, {results['date']}", "",
             f"Machine: {host['cpu']}, {host['cores']} cores ({host['platform']}). "
             f"Batch {results['batch']}, seq {results['seq']}, fp32; p50 latency in ms over "
             f"{results['iters']} runs, interleaved with ONNX Runtime (ratio to it in "
             "parentheses; eager against its own ORT session, at most 10 runs).", "",
             "| model | eager | ORT | TVM untuned | TVM tuned | TVM stock pipeline | "
             "GFLOP | TVM GFLOP/s |", "|---|---|---|---|---|---|---|---|"]
    for entry in results["models"]:
        by = {r["backend"]: r for r in entry["report"]["results"]}
        by["eager"] = entry["eager_report"]["results"][0]  # ratio to its own session's ORT

        def cell(backend: str) -> str:
            r = by.get(backend)
            ratio = f" ({r['vs_ort']:.2f}x)" if r and r["available"] and r["vs_ort"] else ""
            return _cell(r) + ratio

        stock = entry.get("stock_tvm_ms")
        ort = by.get("ort")
        stock_cell = "not run" if stock is None else (
            f"{stock:.1f}" + (f" ({stock / ort['p50_ms']:.0f}x)" if ort and ort["available"]
                              else ""))
        flops = entry["report"]["flops"]
        tvm = by.get("tvm")
        lines.append(f"| {entry['model']}-{entry['preset']} | {cell('eager')} | {cell('ort')} | "
                     f"{cell('tvm')} | {cell('tvm-tuned')} | {stock_cell} | "
                     f"{flops / 1e9:.2f} | {_cell(tvm, 'gflops_per_s')} |")
    lines += ["", "TVM untuned, slowest kernels per forward pass (ms):", ""]
    for entry in results["models"]:
        top = ", ".join(f"{k['name']} {k['ms']:.2f}" for k in entry["kernels"][:6])
        lines.append(f"- {entry['model']}: {top}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for name in ("benchmarks", "forgeline"):
        logging.getLogger(name).setLevel(logging.INFO)
    from forgeline.bench import host_info

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="forgeline-bench-") as tmp:
        work = args.work_dir or Path(tmp)
        models = [bench_one(m.strip(), args, work) for m in args.models.split(",") if m.strip()]
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "host": host_info(), "batch": args.batch, "seq": args.seq, "iters": args.iters,
               "seconds": round(time.perf_counter() - started, 1), "models": models}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = result_stem("run_benchmarks", folder=args.out)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    print(f"wrote {args.out / stem}.json and .md "
          f"in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
