"""`forgeline tune DIR --buckets 1x128,8x128 --trials N`."""

from __future__ import annotations

import argparse
from pathlib import Path

from forgeline.runtime.errors import ConfigError
from forgeline.runtime.format import Manifest

from .options import add_tuning_flags, tune_options
from .output import print_buckets
from .registry import command


def _tune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="artifact folder with a CPU or CUDA build (forgeline compile)")
    p.add_argument("--target", default="cpu", choices=["cpu", "cuda"],
                   help="which build to tune: cpu (measured here) or cuda (on this host's GPU or through --rpc-tracker)")
    p.add_argument("--mcpu", help="LLVM CPU name of the CPU build to tune (default: this host's)")
    p.add_argument("--arch", help="CUDA architecture of the CUDA build to tune (default: sm_90)")
    p.add_argument("--precision", choices=["fp32", "bf16", "int8"],
                   help="which CPU build to tune (default: the fp32 one, or the artifact's only build "
                        "for this CPU)")
    add_tuning_flags(p, with_switch=False)


def cpu_build_tag(tags, base: str, precision: str | None) -> str:
    """The CPU build to tune among ``tags`` for the CPU whose fp32 tag is ``base``: the one
    ``precision`` names, else the fp32 build, else the only build for that CPU."""
    if precision is not None:
        return base if precision == "fp32" else f"{base}-{precision}"
    mine = sorted(t for t in tags if t == base or t.startswith(f"{base}-"))
    if base in mine or not mine:
        return base  # absent: tune_artifact says which builds there are
    if len(mine) > 1:
        raise ConfigError(f"The artifact holds several builds for this CPU ({', '.join(mine)}); "
                          "choose one with --precision fp32, bf16 or int8.")
    return mine[0]


@command("tune", "tune an artifact's CPU or CUDA build per shape bucket and add the tuned builds", _tune_args)
def _tune(args: argparse.Namespace) -> int:
    from forgeline.compile.targets import resolve_target
    from forgeline.compile.tuning import tune_artifact

    if args.target == "cuda":
        if args.precision is not None:
            raise ConfigError("--precision picks a CPU build; a CUDA build is tuned at fp32.")
        tag = resolve_target("cuda", arch=args.arch).tag  # tuning database: tuning/cuda-smXY
    else:
        base = resolve_target("cpu", mcpu=args.mcpu).tag
        tag = cpu_build_tag(Manifest.load(args.path).builds, base, args.precision)
    manifest = tune_artifact(args.path, tag, tune_options(args))
    print_buckets(manifest)
    return 0
