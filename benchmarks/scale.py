"""What a build and a load cost as the model grows: gpt small, base and a 0.5B-parameter decoder.

For each model it runs ``forgeline -v build`` in a child process and records:

- build wall time, and the peak memory of the whole process tree (the sum of every process's RSS,
  sampled every 0.1 s), with the peak of each build stage (the stages are read from the build's
  log lines as they arrive);
- the artifact's size on disk, per file;
- cold load time (a fresh process: ``forgeline.runtime.load``, hashes checked) and the first call's
  latency at batch 1, with how long hashing the parameter file took;

each also as a multiple of the model's fp32 weight bytes. Writes JSON and a PNG.

The 0.5B decoder has Qwen2-0.5B's width (896), depth (24 layers), heads (14) and vocabulary
(151936), with tied embeddings, as a gpt-family model: learned positions, GELU FFN, and full
multi-head attention (the gpt family has no grouped KV heads). Its FFN is 7296 wide, so that its
two FFN matrices hold as many weights as Qwen2's three SwiGLU ones (3 x 4864 = 2 x 7296); it has
~0.53B parameters.

    python benchmarks/scale.py --models small,base            # ~5 min on 2 cores
    python benchmarks/scale.py --models qwen0.5b              # ~10 min, needs ~8 GB free
    python benchmarks/scale.py --models tiny --out /tmp/scale  # a check of the script itself
    python benchmarks/scale.py --models base --python /other/venv/bin/python  # another checkout

Memory and size figures do not depend on what else runs; wall times do, so the JSON records the
load average next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Qwen2-0.5B's shapes in the gpt family (see the docstring for the FFN width).
QWEN05_SHAPES = dict(d_model=896, n_layers=24, n_heads=14, d_ff=7296, vocab_size=151936, max_positions=512)
SAMPLE_S = 0.1
# Log lines that open a stage of the build, in order (substrings -> stage name).
STAGE_MARKS = [(("export ",), "export: torch -> ONNX, golden, ORT parity"),
               (("compile ", " for "), "compile: main"), (("building graph prefill",), "compile: prefill"),
               (("building graph decode",), "compile: decode"),
               (("distinct parameter tensors",), "compile: staged build vs golden (TVM)"),
               (("tvm/", "vs eager: pass"), "check: eager + ORT + TVM (forgeline check)")]


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="small,base", help="comma-separated: tiny, small, base, qwen0.5b")
    p.add_argument("--python", default=sys.executable, help="the interpreter whose forgeline builds")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON and PNG path, no suffix (default: results/scale-<models>-<host>-fp32-<date>)")
    p.add_argument("--work", type=Path, default=None, help="where artifacts go (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the artifacts")
    return p.parse_args(argv)


def tree_rss(pid: int) -> int:
    """Bytes resident in process ``pid`` and all its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_sampled(cmd: list[str]) -> dict:
    """Run ``cmd``; its wall time, peak tree RSS, and the peak RSS of each logged stage."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stages = [{"stage": "start", "t": 0.0, "peak_rss": 0}]
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            for marks, name in STAGE_MARKS:
                if all(m in line for m in marks) and name not in [s["stage"] for s in stages]:
                    stages.append({"stage": name, "t": time.perf_counter() - started, "peak_rss": 0})

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peak = 0
    while proc.poll() is None:
        rss = tree_rss(proc.pid)
        peak = max(peak, rss)
        stages[-1]["peak_rss"] = max(stages[-1]["peak_rss"], rss)
        time.sleep(SAMPLE_S)
    reader.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{''.join(lines[-30:])}")
    return {"wall_s": time.perf_counter() - started, "peak_rss": peak, "stages": stages}


def _checkpoint(python: str, work: Path, shapes: dict) -> Path:
    """A fresh-init gpt checkpoint with ``shapes`` (for a model no preset has)."""
    path = work / "qwen05-shapes.safetensors"
    code = ("import sys, json; from forgeline.define.registry import get_config, build_model; "
            "from forgeline.define.checkpoint import save_checkpoint; "
            "c = get_config('gpt', 'base', **json.loads(sys.argv[2])); "
            "save_checkpoint(build_model(c, seed=0), sys.argv[1])")
    subprocess.run([python, "-c", code, str(path), json.dumps(shapes)], check=True)
    return path


_LOAD = r"""
import sys, time, json
t0 = time.perf_counter()
import numpy as np
from forgeline.runtime import load
from forgeline.runtime.format import Manifest, sha256_file
root = sys.argv[1]
t1 = time.perf_counter()
model = load(root, backend="tvm")
t2 = time.perf_counter()
ids = np.zeros((1, 128), dtype="int64")
model.run(input_ids=ids)
t3 = time.perf_counter()
build = model.build
h0 = time.perf_counter()
if getattr(build, "params_file", ""):
    sha256_file(__import__("pathlib").Path(root) / build.params_file)
h1 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_call_s": t3 - t2,
                  "params_hash_s": h1 - h0 if getattr(build, "params_file", "") else None}))
"""


def cold_load(python: str, root: Path) -> dict:
    """Load time and first-call latency in a fresh process (page cache as the build left it)."""
    out = subprocess.run([python, "-c", _LOAD, str(root)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(model: str, python: str, work: Path) -> dict:
    out = work / model
    forgeline = [str(Path(python).parent / "forgeline")]
    if model == "qwen0.5b":
        cmd = [*forgeline, "-v", "build", "gpt", "--weights", str(_checkpoint(python, work, QWEN05_SHAPES)), "-o", str(out)]
    else:
        cmd = [*forgeline, "-v", "build", "gpt", "--preset", model, "-o", str(out)]
    build = run_sampled(cmd)
    manifest = json.loads((out / "manifest.json").read_text())
    files = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    weight_bytes = _fp32_weight_bytes(out / "weights.safetensors")
    load = cold_load(python, out)
    artifact = sum(files.values())
    result = {"model": model, "fp32_weight_bytes": weight_bytes, "build": build, "files": files,
              "artifact_bytes": artifact, "load": load, "config": manifest["config"],
              "x_weights": {"peak_rss": build["peak_rss"] / weight_bytes, "artifact": artifact / weight_bytes},
              "loadavg": os.getloadavg()}
    return result


def _fp32_weight_bytes(checkpoint: Path) -> int:
    """The checkpoint's tensor bytes (fp32, tied weights once)."""
    with open(checkpoint, "rb") as fh:
        return checkpoint.stat().st_size - 8 - int.from_bytes(fh.read(8), "little")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["model"] for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "peak_rss", "build peak memory"), (axes[1], "artifact", "artifact size")):
        ax.bar(names, [r["x_weights"][key] for r in results])
        ax.set_title(f"{title} (x fp32 weight bytes)")
        ax.axhline(4 if key == "peak_rss" else 2.5, color="red", linestyle="--", linewidth=1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    args = _args(argv)
    if args.out is None:
        from result_names import result_stem  # benchmarks/ is on sys.path when a script runs

        args.out = RESULTS_DIR / result_stem(f"scale-{args.models.replace(',', '-')}")
    work_ctx = tempfile.TemporaryDirectory(prefix="forgeline-scale-") if args.work is None else None
    work = Path(work_ctx.name) if work_ctx else args.work
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for model in args.models.split(","):
        result = measure(model, args.python, work)
        results.append(result)
        x = result["x_weights"]
        print(f"{model}: weights {result['fp32_weight_bytes'] / 1e9:.3f} GB, build {result['build']['wall_s']:.0f} s, "
              f"peak {result['build']['peak_rss'] / 1e9:.2f} GB ({x['peak_rss']:.1f}x), artifact "
              f"{result['artifact_bytes'] / 1e9:.3f} GB ({x['artifact']:.2f}x), load {result['load']['load_s']:.2f} s, "
              f"first call {result['load']['first_call_s'] * 1e3:.0f} ms", flush=True)
        if not args.keep and work_ctx is None:
            subprocess.run(["rm", "-rf", str(work / model)], check=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": args.python,
              "note": "wall times measured on a shared, possibly busy machine; memory and sizes are not disturbed by that",
              "results": results}
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and .png")
    if work_ctx:
        work_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
