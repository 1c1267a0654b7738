"""The Relax VM compiled to native code against interpreted bytecode, on the same model and kernels.

Exports each model once, compiles it twice into two copies of the bundle (``--vm compiled`` and
``--vm bytecode``, same precision), and times both builds in one interleaved run per shape
(forgeline.bench.timing). Checks that both give bit-identical outputs, prints the medians and the
compiled / bytecode ratio, and writes ``benchmarks/results/vm_modes-<models>-<host>-<precision>-<date>.json``.

    python benchmarks/vm_modes.py gpt bert --preset small --precision bf16 --batch 1,8
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from result_names import RESULTS_DIR, result_stem  # benchmarks/ is on sys.path when a script runs

MODES = ("compiled", "bytecode")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="model names (forgeline models), e.g. gpt bert")
    p.add_argument("--preset", default="small")
    p.add_argument("--precision", default="fp32", help="fp32, bf16 or int8 (the host must run it)")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--iters", type=int, default=40, help="timed runs per build and shape")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    return p.parse_args(argv)


def build_pair(model: str, preset: str, precision: str, work: Path) -> dict[str, Path]:
    """One export, compiled once per VM mode into its own copy; {mode: artifact folder}."""
    from forgeline.compile import CompileOptions, compile_artifact
    from forgeline.export import ExportOptions, export_model

    bundle = work / f"{model}-bundle"
    export_model(model, bundle, ExportOptions(preset=preset, generation_graphs=False))
    folders = {}
    for mode in MODES:
        folders[mode] = work / f"{model}-{mode}"
        shutil.copytree(bundle, folders[mode])
        compile_artifact(folders[mode], CompileOptions(precision=precision, vm=mode))
    return folders


def time_pair(folders: dict[str, Path], batch: int, seq: int, iters: int) -> dict:
    """Medians of one interleaved run of both builds at ``batch`` x ``seq``; outputs compared."""
    import forgeline.runtime as rt
    from forgeline.bench import BenchOptions, bench_inputs, interleaved_samples
    from forgeline.runtime.format import Manifest

    models = {mode: rt.load(folder) for mode, folder in folders.items()}
    inputs = bench_inputs(Manifest.load(folders["compiled"]), BenchOptions(batch=batch, seq=seq))
    outputs = {mode: model.run(**inputs) for mode, model in models.items()}
    identical = all(np.array_equal(outputs["compiled"][name], outputs["bytecode"][name])
                    for name in outputs["compiled"])
    samples = interleaved_samples({mode: (lambda m=model: m.run(**inputs)) for mode, model in models.items()},
                                  iters=iters, warmup=3)
    p50 = {mode: statistics.median(times) for mode, times in samples.items()}
    return {"batch": batch, "seq": seq, "p50_ms": p50, "ratio": p50["compiled"] / p50["bytecode"],
            "identical_outputs": identical, "samples_ms": samples}


def main(argv: list[str] | None = None) -> int:
    from forgeline.compile.targets import host_cpu_name

    args = _args(argv)
    logging.basicConfig(level=logging.WARNING)
    batches = [int(b) for b in args.batch.split(",") if b.strip()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="forgeline-vm-modes-") as tmp:
        for model in args.models:
            folders = build_pair(model, args.preset, args.precision, Path(tmp))
            for batch in batches:
                rows.append({"model": f"{model}-{args.preset}", **time_pair(folders, batch, args.seq, args.iters)})
    print(f"host {host_cpu_name()}, precision {args.precision}, p50 ms of one interleaved run per shape")
    print("| model | shape | compiled | bytecode | compiled / bytecode | same outputs |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']}x{r['seq']} | {r['p50_ms']['compiled']:.2f} | "
              f"{r['p50_ms']['bytecode']:.2f} | {r['ratio']:.3f} | {'yes' if r['identical_outputs'] else 'NO'} |")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = result_stem("vm_modes-" + "-".join(args.models), args.precision, folder=args.out)
    (args.out / f"{stem}.json").write_text(json.dumps({"host": host_cpu_name(), "precision": args.precision,
                                                       "iters": args.iters, "rows": rows}, indent=2))
    print(f"wrote {args.out / stem}.json")
    return 0 if all(r["identical_outputs"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
