"""GPU path check: build gpt/bert/gpt-moe small for CUDA, check parity on the GPU, and time it.

On a machine with an NVIDIA GPU (driver + torch with CUDA), within about five minutes:

1. export each model and compile it with ``--target cuda --arch sm_XX`` (XX from the GPU);
2. run the TVM CUDA build through ``forgeline.runtime.load`` and compare every output with eager
   PyTorch on the same GPU (fp32, the project's one tolerance; routing outputs exactly);
3. time TVM-CUDA, ONNX Runtime's CUDA provider and eager PyTorch (CUDA) at batch x seq.

On a machine without one it prints why and exits 0. Exit 1 when a parity check fails.

    python benchmarks/gpu_check.py [--models gpt,bert,gpt-moe] [--batch 1 --seq 128]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("gpu_check")

MODELS = ("gpt", "bert", "gpt-moe")


def gpu_arch() -> tuple[str | None, str]:
    """("sm_XX", "") for the first usable GPU, or (None, why there is none)."""
    from forgeline.runtime.host import cuda_compute_capabilities

    caps = cuda_compute_capabilities()
    if not caps:
        return None, "no NVIDIA GPU or driver found on this machine"
    try:
        import torch
    except ImportError:
        return None, "torch is not installed, so eager PyTorch cannot run on the GPU"
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} has no CUDA support (a CPU build of torch)"
    return f"sm_{caps[0]}", ""  # capabilities come as ints: 9.0 -> 90


def _timed(fn, warmup: int, iters: int, sync=None) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        started = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append((time.perf_counter() - started) * 1e3)
    samples.sort()
    return samples[len(samples) // 2]


def check_model(name: str, arch: str, args: argparse.Namespace, work: Path) -> dict:
    import numpy as np
    import torch

    from forgeline.bench import BenchOptions, bench_inputs
    from forgeline.compile import CompileOptions, compile_artifact
    from forgeline.define import load_checkpoint
    from forgeline.export import ExportOptions, export_model
    from forgeline.runtime import load
    from forgeline.runtime.format import ONNX_FILE, ROUTING_PREFIX, WEIGHTS_FILE, Manifest

    out = work / name
    started = time.perf_counter()
    export_model(name, out, ExportOptions(preset=args.preset, overwrite=True))
    compile_artifact(out, CompileOptions(target="cuda", arch=arch))  # checks golden on the GPU
    build_s = time.perf_counter() - started
    manifest = Manifest.load(out)
    inputs = bench_inputs(manifest, BenchOptions(batch=args.batch, seq=args.seq))
    tvm_model = load(out, backend="tvm", target="cuda")
    eager = load_checkpoint(out / WEIGHTS_FILE).eval().cuda()
    torch_in = [torch.from_numpy(inputs[s.name]).cuda() for s in manifest.inputs]

    @torch.no_grad()
    def run_eager():
        return eager(*torch_in)

    expected = [t.float().cpu().numpy() for t in run_eager()]
    actual = tvm_model.run(**inputs)
    tol, parity, ok = manifest.tolerance, {}, True
    for spec, want in zip(manifest.outputs, expected):
        got = actual[spec.name]
        exact = spec.name.startswith(ROUTING_PREFIX)
        good = got.shape == want.shape and (np.array_equal(got, want) if exact else np.allclose(
            got, want, atol=tol.atol, rtol=tol.rtol))
        parity[spec.name] = {"max_abs": float(np.max(np.abs(got - want))) if got.shape ==
                             want.shape else None, "passed": bool(good)}
        ok &= bool(good)
    times = {"tvm_cuda_ms": _timed(lambda: tvm_model.run(**inputs), args.warmup, args.iters),
             "eager_cuda_ms": _timed(run_eager, args.warmup, args.iters, torch.cuda.synchronize)}
    times["ort_cuda_ms"] = _ort_cuda_ms(out / ONNX_FILE, inputs, args)
    return {"model": name, "arch": arch, "build_seconds": round(build_s, 1), "parity_ok": ok,
            "parity": parity, **times}


def _ort_cuda_ms(onnx_path: Path, inputs: dict, args: argparse.Namespace) -> float | None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        log.warning("ONNX Runtime has no CUDA provider here; install onnxruntime-gpu.")
        return None
    session = ort.InferenceSession(str(onnx_path), providers=["CUDAExecutionProvider"])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        log.warning("ONNX Runtime fell back to %s.", session.get_providers()[0])
        return None
    return _timed(lambda: session.run(None, inputs), args.warmup, args.iters)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    arch, why = gpu_arch()
    if arch is None:
        print(f"gpu_check: skipped, {why}; nothing to check on this machine.")
        return 0
    for name in ("gpu_check", "forgeline"):
        logging.getLogger(name).setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="forgeline-gpu-") as tmp:
        rows = [check_model(m.strip(), arch, args, Path(tmp)) for m in args.models.split(",")]
    print(f"| model | parity | TVM-CUDA ms | ORT-CUDA ms | eager-CUDA ms | build s |  ({arch}, "
          f"{args.batch}x{args.seq})\n|---|---|---|---|---|---|")
    for r in rows:
        ort = "n/a" if r["ort_cuda_ms"] is None else f"{r['ort_cuda_ms']:.2f}"
        print(f"| {r['model']} | {'pass' if r['parity_ok'] else 'FAIL'} | {r['tvm_cuda_ms']:.2f} "
              f"| {ort} | {r['eager_cuda_ms']:.2f} | {r['build_seconds']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["parity_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
