"""`forgeline bench DIR`: latency/throughput of eager, ONNX Runtime and TVM, side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .output import print_table
from .registry import command
from forgeline.runtime.errors import MissingDependencyError


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="artifact folder")
    p.add_argument("--backends", default="eager,ort,tvm,tvm-tuned",
                   help="comma-separated: eager, ort, tvm, tvm-tuned, tvm-bf16, tvm-int8, openvino, "
                        "openvino-f32, ort-int8 (default: the first four)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default: 1)")
    p.add_argument("--seq", type=int, default=128, help="sequence length (default: 128)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per backend (default: 5)")
    p.add_argument("--iters", type=int, default=30, help="timed runs per backend (default: 30)")
    p.add_argument("--json", type=Path, help="write the full report (with every sample) here")
    p.add_argument("--plot", type=Path, help="write a latency bar chart (PNG) here; needs matplotlib")
    p.add_argument("--profile", type=int, nargs="?", const=15, metavar="N",
                   help="also print the N slowest kernels of the TVM build that the first tvm backend "
                        "times (default N: 15), through the copy of that build compiled with --vm bytecode")


@command("bench", "time eager, ONNX Runtime and TVM side by side on one artifact", _bench_args)
def _bench(args: argparse.Namespace) -> int:
    from forgeline.bench import BenchOptions, bench_artifact

    from .files import check_output_file

    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:  # before the benchmark runs, not after
            check_output_file(path, flag, inside=args.path)
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    options = BenchOptions(backends=backends, batch=args.batch, seq=args.seq,
                           warmup=args.warmup, iters=args.iters)
    profiled = None
    if args.profile:  # refused before the benchmark runs, not after
        from forgeline.bench.profile import profiled_build
        from forgeline.runtime.format import Manifest

        profiled = profiled_build(args.path, Manifest.load(args.path), backends)
    report = bench_artifact(args.path, options)
    print(f"{report.model}/{report.preset} at batch {report.batch} x seq {report.seq} on "
          f"{report.host['cpu']} ({report.host['cores']} cores)")
    print_table(("backend", "p50 ms", "p90 ms", "tokens/s", "GFLOP/s", "vs ORT", "top-1", "note"),
                 [_row(r) for r in report.results])
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        plot_report(report, args.plot)
        print(f"wrote {args.plot}")
    if args.profile:
        from forgeline.bench import profile_tvm_kernels

        kernels = profile_tvm_kernels(args.path, options)
        print(f"TVM build {profiled.tag}, per kernel (one forward pass, {args.iters} runs averaged):")
        print_table(("kernel", "calls", "ms", "share"),
                     [(k.name, k.calls, f"{k.ms:.3f}", f"{k.share:.1%}")
                      for k in kernels[:args.profile]])
    return 0


def _row(r) -> tuple:
    if not r.available:
        return (r.backend, "-", "-", "-", "-", "-", "-", r.note)
    fmt = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
    return (r.backend, fmt(r.p50_ms, ".2f"), fmt(r.p90_ms, ".2f"), fmt(r.tokens_per_s, ".0f"),
            fmt(r.gflops_per_s, ".1f"), fmt(r.vs_ort, ".2f") + ("x" if r.vs_ort else ""),
            fmt(r.top1_agreement, ".1%"), r.note)


def plot_report(report, path: Path) -> None:
    """A bar chart of p50 latency per backend, p90 as the error bar's top."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependencyError("--plot needs matplotlib; install it with "
                                     "`pip install matplotlib` (or forgeline[plot]).") from exc
    done = [r for r in report.results if r.available]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([r.backend for r in done], [r.p50_ms for r in done],
           yerr=[[0] * len(done), [r.p90_ms - r.p50_ms for r in done]], capsize=4)
    ax.set_ylabel("latency, ms (p50, bar to p90)")
    ax.set_title(f"{report.model}/{report.preset} {report.batch}x{report.seq} on "
                 f"{report.host['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
