"""What a build and a load cost as the model grows: gpt small, base and a 0.5B-parameter decoder.

For each model it runs ``forgeline -v build`` in a child process and records:

- build wall time, and the peak memory of the whole process tree (the sum of every process's RSS,
  sampled every 0.1 s; also the largest single process, which is what ``/usr/bin/time -v``
  reports), with the peak of each build stage (the stages are read from the build's log lines as
  they arrive, and every log line is kept with the memory at that moment, as a timeline);
- the artifact's size on disk, per file;
- cold load time (a fresh process: ``forgeline.runtime.load``, hashes checked) and the first call's
  latency at batch 1, with how long hashing the parameter file took;

each also as a multiple of the model's fp32 weight bytes. Writes JSON and a PNG.

The 0.5B decoder is a Hugging Face Qwen2 checkpoint folder with Qwen2-0.5B's shapes (896 wide,
24 layers, 14 heads, 2 KV heads, SwiGLU FFN 4864, vocabulary 151936, tied embeddings; 494M
parameters) and seeded random bf16 weights (benchmarks/hf_folder.py), built with ``forgeline
build --from-hf``.

    python benchmarks/scale.py --models small,base            # ~5 min on 2 cores
    python benchmarks/scale.py --models qwen0.5b              # ~15 min, needs ~10 GB free
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
SAMPLE_S = 0.1
# Log lines that open a stage of the build (substrings -> stage name), in the order they come: a
# stage opens at the first matching line after the stage before it; only stages marked optional
# (True) may be missing (a model without generation graphs, a build this host cannot run).
STAGE_MARKS = [(("export ", " -> "), "export: model, checkpoint, torch -> ONNX (each graph), golden", False),
               (("ONNX Runtime session on",), "export: ONNX Runtime vs eager (each graph)", False),
               (("compile ", " for "), "compile: main", False),
               (("building graph prefill",), "compile: prefill", True),
               (("building graph decode",), "compile: decode", True),
               (("distinct parameter tensors",), "compile: staged build vs golden (TVM)", True),
               (("tvm/", "vs eager: pass"), "check: eager PyTorch rerun from the checkpoint", True),
               (("checking on",), "check: ONNX Runtime (each graph)", False),
               (("loading TVM build",), "check: TVM build (each graph)", True)]


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="small,base", help="comma-separated: tiny, small, base, qwen0.5b")
    p.add_argument("--python", default=sys.executable, help="the interpreter whose forgeline builds")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON and PNG path, no suffix (default: results/scale-<models>-<host>-fp32-<date>)")
    p.add_argument("--work", type=Path, default=None, help="where artifacts go (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the artifacts")
    return p.parse_args(argv)


def tree_rss(pid: int) -> tuple[int, int]:
    """Bytes resident in process ``pid`` and all its descendants, and in the largest of them."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    sizes = []
    for proc in procs:
        try:
            sizes.append(proc.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
    return sum(sizes), max(sizes, default=0)


def run_sampled(cmd: list[str]) -> dict:
    """Run ``cmd``; its wall time, peak tree RSS, and the peak RSS of each logged stage."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stages = [{"stage": "start", "t": 0.0, "peak_rss": 0}]
    lines: list[str] = []

    timeline: list[dict] = []  # every log line with the tree RSS now and the peak since the line before
    since_last = [0]
    next_mark = [0]

    def read():
        for line in proc.stdout:
            lines.append(line)
            timeline.append({"t": round(time.perf_counter() - started, 2), "rss": tree_rss(proc.pid)[0],
                             "peak_before": since_last[0], "line": line.rstrip()[:160]})
            since_last[0] = 0
            for index in range(next_mark[0], len(STAGE_MARKS)):
                marks, name, optional = STAGE_MARKS[index]
                if all(m in line for m in marks):
                    stages.append({"stage": name, "t": time.perf_counter() - started, "peak_rss": 0})
                    next_mark[0] = index + 1
                    break
                if not optional:
                    break

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peak = largest = 0
    while proc.poll() is None:
        rss, biggest = tree_rss(proc.pid)
        peak, largest = max(peak, rss), max(largest, biggest)
        since_last[0] = max(since_last[0], rss)
        stages[-1]["peak_rss"] = max(stages[-1]["peak_rss"], rss)
        time.sleep(SAMPLE_S)
    reader.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{''.join(lines[-30:])}")
    return {"wall_s": time.perf_counter() - started, "peak_rss": peak, "peak_rss_largest_process": largest,
            "stages": stages, "timeline": timeline}


def _qwen_folder(python: str, work: Path) -> Path:
    """A Qwen2-0.5B-shaped Hugging Face folder (hf_folder.py), written by a child process so that
    this one, which samples the build, never holds torch or a tensor."""
    folder = work / "qwen2-0.5b-shapes"
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from hf_folder import write_qwen2_folder; "
            "write_qwen2_folder(sys.argv[1])")
    subprocess.run([python, "-c", code, str(folder), str(Path(__file__).resolve().parent)], check=True)
    return folder


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
        cmd = [*forgeline, "-v", "build", "--from-hf", str(_qwen_folder(python, work)), "-o", str(out)]
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
              "x_weights": {"peak_rss": build["peak_rss"] / weight_bytes, "artifact": artifact / weight_bytes,
                            "peak_rss_largest_process": build["peak_rss_largest_process"] / weight_bytes},
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
        for stage in result["build"]["stages"]:
            print(f"  {stage['peak_rss'] / 1e9:6.2f} GB  {stage['stage']}", flush=True)
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
