"""forgeline's int8 builds beside its fp32 builds, whole models, in one interleaved run.

For each model (default: gpt and bert at the ``small`` preset, exported and compiled into the work
dir when it lacks them) and each batch x seq: the p50 latency of the fp32 build and of the int8
build (this host's kernel), timed round-robin in one process, their ratio, and the int8 build's
max abs difference and top-1 agreement with the fp32 build on the same random input. The
machine may be shared: read the ratios. ORT's quantize_dynamic and OpenVINO are timed beside
them by benchmarks/peers.py.

    python benchmarks/int8_models.py --work-dir /tmp/int8bench [--preset small] [--sizes 1x128 8x128]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def prepare(model: str, preset: str, work: Path) -> tuple[Path, str, str]:
    """The artifact with an fp32 and an int8 build; (root, fp32 tag, int8 tag)."""
    from forgeline.compile import CompileOptions, compile_artifact
    from forgeline.export import ExportOptions, export_model
    from forgeline.runtime.format import Manifest

    root = work / f"{model}-{preset}"
    if not (root / "manifest.json").exists():
        export_model(model, root, ExportOptions(preset=preset, generation_graphs=False))
    for precision in ("fp32", "int8"):
        if not any(b.precision == precision for b in Manifest.load(root).builds.values()):
            compile_artifact(root, CompileOptions(precision=precision))
    builds = Manifest.load(root).builds.values()
    tag = {p: next(b.tag for b in builds if b.precision == p and b.kind == "llvm" and not b.tag.endswith("emu"))
           for p in ("fp32", "int8")}
    return root, tag["fp32"], tag["int8"]


def bench(root: Path, tags: tuple[str, str], batch: int, seq: int, rounds: int) -> str:
    from forgeline.runtime.model import load

    models = {tag: load(root, target=tag) for tag in tags}
    ids = np.random.default_rng(0).integers(0, 100, (batch, seq))  # ids every vocabulary holds
    fill = {"attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    inputs = {spec.name: fill.get(spec.name, ids).astype(np.int64)
              for spec in next(iter(models.values())).manifest.inputs}
    outputs = {tag: model.run(**inputs) for tag, model in models.items()}  # warm-up, and compared
    samples: dict[str, list[float]] = {tag: [] for tag in tags}
    for _ in range(rounds):
        for tag, model in models.items():
            started = time.perf_counter()
            model.run(**inputs)
            samples[tag].append((time.perf_counter() - started) * 1e3)
    fp32, int8 = (np.median(samples[tag]) for tag in tags)
    names = list(outputs[tags[0]])
    name = next((n for n in names if "logits" in n), names[0])  # the LM/MLM head where there is one
    ref, got = outputs[tags[0]][name], outputs[tags[1]][name]
    top1 = float((ref.argmax(-1) == got.argmax(-1)).mean())
    return (f"{root.name} {batch}x{seq}: fp32 {fp32:.2f} ms, int8 {int8:.2f} ms ({fp32 / int8:.2f}x), "
            f"{name} max abs {np.abs(ref - got).max():.2e}, top-1 agreement {top1:.1%}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["gpt", "bert"])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--sizes", nargs="+", default=["1x128", "8x128"], help="BATCHxSEQ")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    for model in args.models:
        root, fp32, int8 = prepare(model, args.preset, args.work_dir)
        for size in args.sizes:
            batch, seq = (int(v) for v in size.split("x"))
            print(bench(root, (fp32, int8), batch, seq, args.rounds), flush=True)


if __name__ == "__main__":
    main()
