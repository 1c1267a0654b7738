"""`forgeline tune DIR --buckets 1x128,8x128 --trials N`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_tuning_flags, tune_options
from .output import print_buckets
from .registry import command


def _tune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="artifact folder with a CPU or CUDA build (forgeline compile)")
    p.add_argument("--target", default="cpu", choices=["cpu", "cuda"],
                   help="which build to tune: cpu (measured here) or cuda (on this host's GPU or through --rpc-tracker)")
    p.add_argument("--mcpu", help="LLVM CPU name of the CPU build to tune (default: this host's)")
    p.add_argument("--arch", help="CUDA architecture of the CUDA build to tune (default: sm_90)")
    add_tuning_flags(p, with_switch=False)


@command("tune", "tune an artifact's CPU or CUDA build per shape bucket and add the tuned builds", _tune_args)
def _tune(args: argparse.Namespace) -> int:
    from forgeline.compile.targets import resolve_target
    from forgeline.compile.tuning import tune_artifact

    if args.target == "cuda":
        tag = resolve_target("cuda", arch=args.arch).tag  # tuning database: tuning/cuda-smXY
    else:
        tag = resolve_target("cpu", mcpu=args.mcpu).tag
    manifest = tune_artifact(args.path, tag, tune_options(args))
    print_buckets(manifest)
    return 0
