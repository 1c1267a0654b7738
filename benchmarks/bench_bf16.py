"""bf16 beside fp32 and the peers, in one interleaved run: latency, the peers' ratios and the bf16 kernel profile.

For each artifact (default: gpt-small and bert-small, exported and compiled here when the work
dir lacks them) and each batch x seq: ONNX Runtime fp32, forgeline TVM fp32, forgeline TVM bf16
(AMX; where this host has it), OpenVINO at its default precision and at f32, timed in the same
rounds (forgeline.bench). Prints p50 latencies, each as a ratio to OpenVINO's default, and the
bf16 build's slowest kernels. The machine may be shared: read the ratios.

    python benchmarks/bench_bf16.py --work-dir /tmp/bf16bench [--sizes 1x128 8x128]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from forgeline.bench import BenchOptions, bench_artifact, profile_tvm_kernels
from forgeline.bench.peers import openvino_precision
from forgeline.runtime.errors import ForgelineError
from forgeline.runtime.format import Manifest
from forgeline.runtime.host import read_cpu_features

BACKENDS = ("ort", "tvm", "tvm-bf16", "openvino", "openvino-f32")


def prepare(model: str, work: Path) -> Path:
    """Export ``model``/small and compile fp32, plus bf16 where this host has AMX."""
    from forgeline.compile import CompileOptions, compile_artifact
    from forgeline.export import ExportOptions, export_model

    root = work / f"{model}-small"
    if not (root / "manifest.json").exists():
        export_model(model, root, ExportOptions(preset="small", generation_graphs=False))
    precisions = {b.precision for b in Manifest.load(root).builds.values()}
    if "fp32" not in precisions:
        compile_artifact(root, CompileOptions())
    if "bf16" not in precisions and {"amx_bf16", "amx_tile"} <= read_cpu_features():
        compile_artifact(root, CompileOptions(precision="bf16"))
        # The same build kept in bytecode beside it: the kernel profile needs the VM's call hook.
        compile_artifact(root, CompileOptions(precision="bf16", vm="bytecode"))
    return root


def bench(root: Path, batch: int, seq: int, iters: int) -> dict:
    report = bench_artifact(root, BenchOptions(backends=BACKENDS, batch=batch, seq=seq, iters=iters))
    ref = report.result("openvino")
    rows = {}
    for r in report.results:
        ratio = r.p50_ms / ref.p50_ms if r.available and ref and ref.available else None
        rows[r.backend] = {"p50_ms": r.p50_ms, "vs_openvino": ratio, "note": r.note}
        cell = f"{r.p50_ms:7.2f} ms  {ratio:5.2f}x" if ratio else f"not run: {r.note}"
        print(f"{root.name:11s} {batch}x{seq:<4d} {r.backend:13s} {cell}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["gpt", "bert"])
    parser.add_argument("--sizes", nargs="+", default=["1x128", "8x128"])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for model in args.models:
        root = prepare(model, args.work_dir)
        print(f"{root.name}: OpenVINO default precision here: {openvino_precision(root)}")
        for size in args.sizes:
            batch, seq = (int(v) for v in size.split("x"))
            results[f"{root.name}/{size}"] = bench(root, batch, seq, args.iters)
        try:
            for k in profile_tvm_kernels(root, BenchOptions(backends=("tvm-bf16",), iters=10))[:8]:
                print(f"  bf16 kernel {k.name:40s} {k.calls:3d} calls {k.ms:7.3f} ms {k.share:6.1%}")
        except ForgelineError as exc:
            print(f"  no bf16 kernel profile: {exc}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
