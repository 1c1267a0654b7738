"""`forgeline tune DIR --buckets 1x128,8x128 --trials N`, and the tuning flags of `compile`."""

from __future__ import annotations

import argparse
from pathlib import Path

from forgeline.cli import command
from forgeline.runtime.errors import ConfigError


def add_tuning_flags(p: argparse.ArgumentParser, *, with_switch: bool = True) -> None:
    """The tuning flags; ``with_switch`` adds ``--tune`` (for commands that tune on request)."""
    group = p.add_argument_group("tuning (MetaSchedule, one static-shape build per bucket)")
    if with_switch:
        group.add_argument("--tune", action="store_true", help="also tune a build per --buckets shape")
    group.add_argument("--buckets", required=not with_switch,
                       help="shapes to tune, BxT comma-separated, e.g. 1x128,8x128 (encoder-decoder: "
                            "BxSxT, or BxT for equal lengths)")
    group.add_argument("--trials", type=int, default=64, help="measured candidates per bucket (default: 64)")
    group.add_argument("--max-trials-per-task", type=int, help="cap per fused kernel (default: --trials)")
    group.add_argument("--tuning-db", type=Path, metavar="DIR",
                       help="tuning database folder (default: $FORGELINE_CACHE_DIR or "
                            "~/.cache/forgeline, under tuning/<target>)")
    group.add_argument("--rpc-tracker", metavar="HOST:PORT",
                       help="measure on devices behind this TVM RPC tracker")
    group.add_argument("--rpc-key", metavar="KEY", help="device key registered with --rpc-tracker")
    group.add_argument("--tune-matmuls", action="store_true",
                       help="let MetaSchedule tune the matmuls too (default: they keep forgeline's GEMM schedule)")


def tune_options(args: argparse.Namespace):
    """TuneOptions from parsed flags; None when ``--tune`` was not asked for."""
    from forgeline.compile.tuning import TuneOptions

    if not getattr(args, "tune", True):
        given = [flag for flag, value in (("--buckets", args.buckets), ("--tuning-db", args.tuning_db),
                                          ("--rpc-tracker", args.rpc_tracker)) if value]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply when tuning; add --tune.")
        return None
    if not args.buckets:
        raise ConfigError("--tune needs --buckets, e.g. --buckets 1x128,8x128 (batch x sequence).")
    return TuneOptions(buckets=args.buckets, trials=args.trials, max_trials_per_task=args.max_trials_per_task,
                       database=args.tuning_db, rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key,
                       tune_matmuls=args.tune_matmuls)


def print_buckets(manifest) -> None:
    for build in manifest.builds.values():
        for key, bucket in build.buckets.items():
            stage = manifest.stages.get(f"tvm/{build.tag}/{key}")
            check = "pass" if stage and stage.passed else "not checked" if stage is None else "FAIL"
            print(f"bucket {key}: {bucket['lib']}, {bucket['trials']} trials run "
                  f"({bucket.get('reused_trials', 0)} reused), {len(bucket['tasks_tuned'])} kernels tuned, "
                  f"{len(bucket['tasks_default'])} at defaults, {len(bucket.get('gemm_schedule', []))} "
                  f"matmuls on the GEMM schedule, {bucket['tuning_seconds']:.1f} s; "
                  f"vs ONNX Runtime: {check}")


def _tune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="artifact folder with a CPU build (forgeline compile)")
    p.add_argument("--mcpu", help="LLVM CPU name of the build to tune (default: this host's)")
    add_tuning_flags(p, with_switch=False)


@command("tune", "tune an artifact's CPU build per shape bucket and add the tuned builds", _tune_args)
def _tune(args: argparse.Namespace) -> int:
    from forgeline.compile.targets import resolve_target
    from forgeline.compile.tuning import tune_artifact

    tag = resolve_target("cpu", mcpu=args.mcpu).tag
    manifest = tune_artifact(args.path, tag, tune_options(args))
    print_buckets(manifest)
    return 0
