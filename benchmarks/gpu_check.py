"""GPU check: build the small models for CUDA, check them against eager PyTorch on the GPU, time them.

On a machine with an NVIDIA GPU (driver, torch with CUDA, forgeline[cuda-build]):

1. each model is exported and compiled with ``forgeline build --target cuda --arch sm_XX`` (XX from
   the GPU) in a subprocess, fp32 and (``--fp16``) fp16; the build itself checks its golden cases
   on the GPU, and this script checks every output again against eager PyTorch on the GPU;
2. ``forgeline tune --target cuda`` tunes one bucket briefly (``--tune-trials``);
3. TVM-CUDA (untuned, tuned, fp16), ONNX Runtime's CUDA provider, eager PyTorch and torch.compile
   are timed at every ``--shapes`` batch x seq, numpy in and numpy out for every backend, in
   interleaved rounds; gpt models also get greedy decode tokens/s through the KV-cache graphs.

It writes ``gpu_check.json`` and ``gpu_check.md`` (a markdown table) into ``--out``. Exit 1 when
a parity check fails. ``--dry-run`` needs no GPU: it builds tiny models for CUDA (code generation
and nvcc only) and writes the same table with the timings left empty, to check the script itself.

    python benchmarks/gpu_check.py --out /tmp/gpu                    # on the GPU host
    python benchmarks/gpu_check.py --dry-run --models gpt --out /tmp/dry
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("gpu_check")

MODELS = ("gpt", "bert", "gpt-moe")
SHAPES = "1x128,8x128,32x128,1x512,8x512,32x512"
COLUMNS = ("tvm", "tvm-tuned", "tvm-fp16", "ort-cuda", "eager", "torch-compile")


def gpu_arch() -> tuple[str | None, str]:
    """("sm_XX", "") for the first usable GPU, or (None, why there is none)."""
    from forgeline.runtime.host import cuda_compute_capabilities, cuda_driver_problem

    caps = cuda_compute_capabilities()
    if not caps:
        return None, cuda_driver_problem() or "no CUDA device"
    try:
        import torch
    except ImportError:
        return None, "torch is not installed, so eager PyTorch cannot run on the GPU"
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} has no CUDA support (a CPU build of torch)"
    return f"sm_{caps[0]}", ""  # capabilities come as ints: 9.0 -> 90


def forgeline(*args: str) -> None:
    """Run the CLI in a subprocess: compiling before this process loads TVM's CUDA runtime."""
    command = [sys.executable, "-m", "forgeline", *args]
    log.info("$ forgeline %s", " ".join(args))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"forgeline {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def build(name: str, args: argparse.Namespace, arch: str, work: Path) -> dict:
    """Export + compile fp32 (and fp16), then tune one bucket; seconds per step."""
    out, seconds = work / name, {}
    started = time.perf_counter()
    forgeline("build", name, "--preset", args.preset, "-o", str(out), "--overwrite",
              "--target", "cuda", "--arch", arch)
    seconds["build_fp32"] = time.perf_counter() - started
    if args.fp16:
        started = time.perf_counter()
        forgeline("compile", str(out), "--target", "cuda", "--arch", arch, "--precision", "fp16")
        seconds["build_fp16"] = time.perf_counter() - started
    if args.tune_trials and not args.dry_run:
        started = time.perf_counter()
        forgeline("tune", str(out), "--target", "cuda", "--arch", arch, "--buckets", args.tune_bucket,
                  "--trials", str(args.tune_trials))
        seconds["tune"] = time.perf_counter() - started
    return {"path": out, "seconds": {k: round(v, 1) for k, v in seconds.items()}}


def parity(out: Path, shape: tuple[int, int]) -> dict:
    """Every output of the CUDA build against eager PyTorch on the GPU, at one shape."""
    import numpy as np
    import torch

    from forgeline.bench import BenchOptions, bench_inputs
    from forgeline.define import load_checkpoint
    from forgeline.runtime import load
    from forgeline.runtime.format import ROUTING_PREFIX, WEIGHTS_FILE

    model = load(out, backend="tvm", target="cuda")
    inputs = bench_inputs(model.manifest, BenchOptions(batch=shape[0], seq=shape[1]))
    eager = load_checkpoint(out / WEIGHTS_FILE).eval().cuda()
    with torch.no_grad():
        expected = [t.float().cpu().numpy() for t in eager(*[torch.from_numpy(inputs[s.name]).cuda()
                                                             for s in model.manifest.inputs])]
    got, tol, rows = model.run(**inputs), model.manifest.tolerance, {}
    for spec, want in zip(model.manifest.outputs, expected):
        have = got[spec.name]
        exact = spec.name.startswith(ROUTING_PREFIX)
        same = have.shape == want.shape and (np.array_equal(have, want) if exact else
                                             np.allclose(have, want, atol=tol.atol, rtol=tol.rtol))
        rows[spec.name] = {"max_abs": float(np.max(np.abs(have - want))) if have.shape == want.shape
                           else None, "passed": bool(same)}
    return rows


def runners(out: Path, manifest, inputs: dict, eager, compiled) -> dict:
    """name -> a zero-argument function that runs one batch, numpy in and numpy out."""
    import onnxruntime as ort
    import torch

    from forgeline.runtime import load
    from forgeline.runtime.backends.tvm import library_executor
    from forgeline.runtime.format import ONNX_FILE

    names = [s.name for s in manifest.inputs]
    arrays = [inputs[n] for n in names]
    cuda = {b.precision: b for b in manifest.builds.values() if b.kind == "cuda"}
    run = {}
    for column, precision in (("tvm", "fp32"), ("tvm-fp16", "fp16")):
        if precision in cuda:  # the dynamic library itself: never a tuned bucket
            executor = library_executor(out, cuda[precision], device="cuda")
            run[column] = lambda e=executor: e.run(arrays)
    shape_key = "x".join(str(inputs[names[0]].shape[d]) for d in range(2))
    if shape_key in cuda["fp32"].buckets:  # load() serves the tuned bucket at exactly this shape
        tuned = load(out, target=cuda["fp32"].tag)
        run["tvm-tuned"] = lambda: tuned.run(**inputs)

    def torch_run(module):
        with torch.no_grad():
            return [t.cpu().numpy() for t in module(*[torch.from_numpy(a).cuda() for a in arrays])]

    run["eager"] = lambda: torch_run(eager)
    run["torch-compile"] = lambda: torch_run(compiled)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        session = ort.InferenceSession(str(out / ONNX_FILE), providers=["CUDAExecutionProvider"])
        run["ort-cuda"] = lambda: session.run(None, inputs)
    return run


def interleaved_p50(run: dict, warmup: int, iters: int) -> dict[str, float]:
    """Median ms per backend over rounds that interleave the backends (fair on a busy host)."""
    import numpy as np

    for fn in run.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in run}
    for _ in range(-(-iters // 5)):
        for name, fn in run.items():
            fn()  # untimed: the previous backend's work drains
            for _ in range(5):
                started = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - started) * 1e3)
    return {name: float(np.median(values)) for name, values in samples.items()}


def time_model(out: Path, shapes: list[tuple[int, int]], args: argparse.Namespace) -> list[dict]:
    import torch

    from forgeline.bench import BenchOptions, bench_inputs
    from forgeline.define import load_checkpoint
    from forgeline.runtime.format import WEIGHTS_FILE, Manifest

    manifest = Manifest.load(out)
    eager = load_checkpoint(out / WEIGHTS_FILE).eval().cuda()
    compiled = torch.compile(eager, dynamic=True)
    rows = []
    for batch, seq in shapes:
        inputs = bench_inputs(manifest, BenchOptions(batch=batch, seq=seq))
        run = runners(out, manifest, inputs, eager, compiled)
        rows.append({"shape": f"{batch}x{seq}", "ms": interleaved_p50(run, args.warmup, args.iters)})
    return rows


def decode_tokens_per_s(out: Path, tokens: int) -> dict[str, float]:
    """Greedy decoding through the KV-cache graphs, batch 1, TVM-CUDA and ORT."""
    from forgeline.runtime import load

    rates = {}
    for backend, target in (("tvm", "cuda"), ("ort", None)):
        model = load(out, backend=backend, target=target)
        model.generate([1, 2, 3, 4], max_new_tokens=4)  # warm up
        started = time.perf_counter()
        model.generate([1, 2, 3, 4], max_new_tokens=tokens)
        rates[backend] = tokens / (time.perf_counter() - started)
    return rates


def table(rows: list[dict], header: str) -> str:
    """The markdown table: one row per model and shape, ms per backend and TVM/ORT."""
    lines = [header, "", "| model | shape | " + " | ".join(f"{c} ms" for c in COLUMNS) +
             " | TVM / ORT | parity |", "|" + "---|" * (len(COLUMNS) + 4)]
    for row in rows:
        for timing in row.get("timings") or [{"shape": "-", "ms": {}}]:
            ms = timing["ms"]
            cells = [f"{ms[c]:.3f}" if c in ms else "n/a" for c in COLUMNS]
            ratio = f"{ms['tvm'] / ms['ort-cuda']:.2f}" if {"tvm", "ort-cuda"} <= set(ms) else "n/a"
            lines.append(f"| {row['model']} | {timing['shape']} | {' | '.join(cells)} | {ratio} | "
                         f"{row['parity_text']} |")
    decode = [r for r in rows if r.get("decode_tokens_per_s")]
    if decode:
        lines += ["", "| model | decode tok/s TVM-CUDA | decode tok/s ORT |", "|---|---|---|"]
        lines += [f"| {r['model']} | {r['decode_tokens_per_s']['tvm']:.0f} | "
                  f"{r['decode_tokens_per_s']['ort']:.0f} |" for r in decode]
    return "\n".join(lines) + "\n"


def check_one(name: str, args: argparse.Namespace, arch: str, work: Path) -> dict:
    built = build(name, args, arch, work)
    row = {"model": name, "arch": arch, "build_seconds": built["seconds"]}
    if args.dry_run:
        from forgeline.runtime.format import Manifest

        builds = Manifest.load(built["path"]).builds.values()
        row["parity_text"] = "not run (dry run: " + ", ".join(
            f"{b.tag} {'codegen only' if b.codegen_only else 'fatbin'}" for b in builds) + ")"
        return row
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    row["parity"] = parity(built["path"], shapes[0])
    row["parity_ok"] = all(p["passed"] for p in row["parity"].values())
    row["parity_text"] = "pass" if row["parity_ok"] else "FAIL"
    row["timings"] = time_model(built["path"], shapes, args)
    if name.startswith("gpt"):
        row["decode_tokens_per_s"] = decode_tokens_per_s(built["path"], args.decode_tokens)
    return row


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--preset", default="small")
    p.add_argument("--shapes", default=SHAPES, help="batch x seq, comma-separated")
    p.add_argument("--tune-bucket", default="1x128", help="the bucket tuned briefly")
    p.add_argument("--tune-trials", type=int, default=32, help="0: skip tuning")
    p.add_argument("--no-fp16", dest="fp16", action="store_false", help="skip the fp16 builds")
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--dry-run", action="store_true", help="no GPU: tiny models, codegen only, no timing")
    args = p.parse_args(argv)
    if args.dry_run:
        args.preset = "tiny"
    return args


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    arch, why = gpu_arch()
    if arch is None and not args.dry_run:
        print(f"gpu_check: no GPU here ({why}); run it on a GPU host, or pass --dry-run.")
        return 0
    arch = arch or "sm_90"
    with tempfile.TemporaryDirectory(prefix="forgeline-gpu-") as tmp:
        rows = [check_one(m.strip(), args, arch, Path(tmp)) for m in args.models.split(",")]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"GPU check {when}, {arch}, preset {args.preset}{' (dry run)' if args.dry_run else ''}: "
              "median ms per batch, numpy in and out, interleaved rounds")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(rows, indent=2, default=str))
    (args.out / "gpu_check.md").write_text(table(rows, header))
    print(table(rows, header))
    return 0 if all(r.get("parity_ok", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
