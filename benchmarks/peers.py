"""forgeline against the runtimes users already have, on the artifact's own model.onnx.

ONNX Runtime (defaults, and int8 after ``quantize_dynamic``), OpenVINO (f32 hint, and its default
precision: bf16 on CPUs with AVX512-BF16 or AMX) and IREE (llvm-cpu, target cpu host, static
shapes) where installed (``pip install ".[peers]"``), beside forgeline's untuned dynamic TVM
build, the tuned bucket build when there is one, and every reduced-precision build the manifest
lists (``tvm-bf16``, ``tvm-int8``, ...). One interleaved run per shape in this process
(forgeline.bench.peer_report); every output is checked against eager PyTorch, and the table gives
each backend's top-1 agreement with eager fp32 beside its latency. Prints a markdown table and
writes ``benchmarks/results/peers-<model>-<preset>-<host>-<date>.json``, ``.md`` and ``.png``.

    python benchmarks/peers.py gpt --preset small --batch 1,8 --seq 128 [--tune-minutes N] [--artifact DIR]
        [--precisions auto|bf16,int8|none] [--bf16-kernels auto,avx512bf16] [--int8-kernels auto,vnni]
        [--attention-precision fp32,reduced] [--repeat N]

Without ``--artifact`` the model is exported and compiled into a temporary folder first, in fp32
and in every reduced CPU precision forgeline has (``--precisions auto``: bf16, and int8 where
it exists) that this host can run; ``--bf16-kernels auto,avx512bf16`` on an AMX host adds the
AVX512-BF16 kernel's build beside the AMX one, and ``--int8-kernels auto,vnni`` the VNNI int8
build beside the AMX one (tag ``...-int8-vnni``). ``--attention-precision fp32,reduced`` builds each
reduced precision twice, with attention's batched matmuls in fp32 (``tvm-int8``) and with bf16
operands (``tvm-int8-attnbf16``). The machine this runs on may be shared: read the ratios, which
come from one interleaved run; ``--repeat N`` makes N interleaved runs per shape and adds each
run's ratio of ``tvm-bf16`` to ``openvino`` and ``tvm-int8`` to ``ort-int8``, and their median.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from result_names import RESULTS_DIR, result_stem  # benchmarks/ is on sys.path when a script runs
SECONDS_PER_TRIAL = 0.6  # steady-state tuning cost per trial on 2 cores (compile/tuning/builder.py)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a model name (forgeline models), e.g. gpt or bert")
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes, e.g. 1,8")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tune-minutes", type=float, default=0.0,
                   help="tune one bucket per shape for about this long in all (0: no tuned build)")
    p.add_argument("--artifact", type=Path, help="an existing artifact folder (default: build one)")
    p.add_argument("--precisions", default="auto",
                   help="reduced-precision builds to add when building: auto (all), none, or e.g. bf16,int8")
    p.add_argument("--bf16-kernels", default="auto",
                   help="bf16 kernels to build: auto (the CPU's best), amx, avx512bf16, comma-separated")
    p.add_argument("--int8-kernels", default="auto",
                   help="int8 kernels to build: auto (the CPU's best), amx, vnni, avxvnni, avx2, comma-separated")
    p.add_argument("--attention-precision", default="fp32",
                   help="attention's batched matmuls in the reduced builds: fp32, reduced (bf16 operands), or both")
    p.add_argument("--repeat", type=int, default=1,
                   help="interleaved runs per shape; with more than one, also print each run's ratio of "
                        "tvm-bf16 to openvino and tvm-int8 to ort-int8 and their median")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    return p.parse_args(argv)


def build(model: str, preset: str, out: Path, precisions: list[str], bf16_kernels: tuple[str, ...],
          int8_kernels: tuple[str, ...] = ("auto",), attention: tuple[str, ...] = ("fp32",)) -> Path:
    from forgeline.bench.precisions import compile_precisions
    from forgeline.compile import compile_artifact
    from forgeline.export import ExportOptions, export_model

    export_model(model, out, ExportOptions(preset=preset, overwrite=True, generation_graphs=False))
    compile_artifact(out)
    compile_precisions(out, precisions, bf16_kernels, int8_kernels=int8_kernels, attention=attention)
    return out


def tune(artifact: Path, batches: list[int], seq: int, minutes: float) -> None:
    from forgeline.compile.tuning import TuneOptions, tune_artifact
    from forgeline.runtime.format import Manifest
    from forgeline.runtime.model import select_build

    tag = select_build(Manifest.load(artifact), "cpu").tag
    trials = max(8, int(minutes * 60 / SECONDS_PER_TRIAL / len(batches)))
    buckets = [{"batch": b, "seq": seq} for b in batches]
    tune_artifact(artifact, tag, TuneOptions(buckets=buckets, trials=trials))


def plot(reports, path: Path) -> bool:
    """Bars of p50 latency per backend, one group per shape; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(reports), figsize=(5 * len(reports), 4), squeeze=False)
    for ax, report in zip(axes[0], reports):
        ran = [r for r in report.results if r.available]
        ax.barh([r.backend for r in ran], [r.p50_ms for r in ran], color="tab:blue")
        for i, r in enumerate(ran):
            ax.text(r.p50_ms, i, f" {r.p50_ms:.2f}", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("p50 latency, ms (lower is faster)")
        ax.set_title(f"{report.model}-{report.preset} {report.batch}x{report.seq}")
    fig.suptitle(f"{reports[0].host['cpu']}, {reports[0].host['cores']} cores, {reports[0].date}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from forgeline.bench.peer_report import PeerOptions, bench_peers, markdown_table, repeated_ratios, repeated_table

    from forgeline.bench.precisions import parse_precisions

    batches = [int(b) for b in args.batch.split(",")]
    precisions = [] if args.precisions == "none" else parse_precisions(args.precisions)
    kernels = tuple(k for k in args.bf16_kernels.split(",") if k)
    with tempfile.TemporaryDirectory(prefix="forgeline-peers-art-") as tmp:
        attention = tuple(a for a in args.attention_precision.split(",") if a)
        artifact = args.artifact or build(args.model, args.preset, Path(tmp) / f"{args.model}-{args.preset}",
                                          precisions, kernels, tuple(k for k in args.int8_kernels.split(",") if k),
                                          attention)
        if args.tune_minutes > 0:
            tune(artifact, batches, args.seq, args.tune_minutes)
        reports = [bench_peers(artifact, PeerOptions(batch=b, seq=args.seq, iters=args.iters, warmup=args.warmup))
                   for b in batches for _ in range(max(1, args.repeat))]
    table = markdown_table(reports)
    if args.repeat > 1:
        table += "\n\nRatios of p50 latency, each from one interleaved run:\n\n" + repeated_table(repeated_ratios(reports))
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / result_stem(f"peers-{reports[0].model}-{reports[0].preset}", precision=None, folder=args.out)
    stem.with_suffix(".json").write_text(json.dumps([r.to_dict() for r in reports], indent=2))
    stem.with_suffix(".md").write_text(table + "\n")
    wrote_png = plot(reports, stem.with_suffix(".png"))
    print(f"\nwrote {stem}.json, .md{', .png' if wrote_png else ' (no .png: matplotlib is not installed)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
