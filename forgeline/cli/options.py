"""Argument groups and option objects that several commands share (export, compile, tuning, backend)."""

from __future__ import annotations

import argparse
from pathlib import Path

from forgeline.runtime.errors import ConfigError
from forgeline.runtime.schema import VM_MODES


def export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model name, e.g. gpt, bert, transformer, gpt-moe (see `forgeline models`); "
                                           "optional with --from-hf, whose config.json names the architecture")
    p.add_argument("--preset", default="tiny", help="size preset: tiny, small or base (default: tiny)")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder to write the bundle into")
    p.add_argument("--seed", type=int, default=0, help="seed for the weight init and golden inputs")
    p.add_argument("--weights", type=Path, help="a forgeline safetensors checkpoint to export instead of a fresh init")
    p.add_argument("--from-hf", type=Path, metavar="FOLDER",
                   help="import a Hugging Face checkpoint folder (config.json + safetensors; its tokenizer.json "
                        "ships too): gpt2, bert, llama, mistral, qwen2 and more (docs/models.md)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact in the output folder")
    p.add_argument("--no-generation-graphs", action="store_true",
                   help="gpt/transformer: skip the KV-cache prefill/decode graphs that generate/translate need")


def compile_args(p: argparse.ArgumentParser, with_path: bool = True) -> None:
    if with_path:
        p.add_argument("path", type=Path, help="bundle or artifact folder")
    p.add_argument("--target", default="cpu", help="target preset: cpu (this host's CPU) or cuda (default: cpu)")
    p.add_argument("--arch", help="CUDA architecture for --target cuda (default: sm_90)")
    p.add_argument("--mcpu", help="LLVM CPU name for --target cpu (default: detected from this host)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8", "fp16"],
                   help="precision of the matmuls: fp32 (default); bf16 on CPUs with AVX512-BF16 or AMX (--target cpu); "
                        "int8 (dynamic quantization) on x86-64 CPUs with AVX2 or VNNI (--target cpu); "
                        "fp16 on CUDA tensor cores (--target cuda). Routers, norms and softmax stay fp32")
    p.add_argument("--attention-precision", default="fp32", choices=["fp32", "reduced"],
                   help="attention's batched matmuls (QK^T, PV) in a bf16 or int8 build: fp32 (default) or "
                        "reduced (bf16 operands, fp32 sums)")
    p.add_argument("--vm", default="compiled", choices=list(VM_MODES),
                   help="how the Relax VM runs a CPU build's graphs: compiled to native code (default) or "
                        "bytecode, interpreted, which `forgeline bench --profile` needs to time each kernel "
                        "(tag + -bytecode, beside the compiled build); CUDA builds always run bytecode")
    add_tuning_flags(p)


def build_args(p: argparse.ArgumentParser) -> None:
    export_args(p)
    p.add_argument("--onnx", type=Path, metavar="FILE",
                   help="build this ONNX file instead of a registry model (ONNX Runtime on it is the reference)")
    p.add_argument("--max-onnx-mb", type=int, default=4096,
                   help="refuse an --onnx model larger than this, external data included (default: 4096)")
    p.add_argument("--dim-limit", action="append", default=[], metavar="DIM=N",
                   help="--onnx: the largest size of a symbolic dim, e.g. seq=512 (a position table's rows); "
                        "repeatable")
    compile_args(p, with_path=False)


def build_source(args: argparse.Namespace) -> tuple[str | Path, dict]:
    """What `build` builds: the registry name, or the --onnx file with its keyword options."""
    if args.onnx is not None:
        if args.model or args.from_hf or args.weights:
            raise ConfigError("--onnx builds that file alone; leave out the model name, --from-hf and --weights.")
        return args.onnx, {"max_onnx_bytes": args.max_onnx_mb << 20, "dim_limits": _dim_limits(args.dim_limit)}
    if not args.model and not args.from_hf:
        raise ConfigError("name a model (see `forgeline models`), or pass --from-hf FOLDER or --onnx FILE.")
    if args.dim_limit:
        raise ConfigError("--dim-limit applies to --onnx files; a registry model knows its limits.")
    return args.model, {}


def _dim_limits(items: list[str]) -> dict[str, int]:
    limits = {}
    for item in items:
        dim, _, size = item.partition("=")
        if not dim or not size.isdigit():
            raise ConfigError(f"--dim-limit {item!r} is not DIM=N; write it like seq=512.")
        limits[dim] = int(size)
    return limits


def backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="tvm", choices=["tvm", "ort"], help="runtime backend (default: tvm)")
    p.add_argument("--target", help="TVM build tag or kind (cpu, cuda); default: the best one this host can run")
    verify_key_arg(p)


def verify_key_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verify-key", type=Path, metavar="PUBKEY",
                   help="refuse the artifact unless it carries a valid signature by this ed25519 public key (PEM)")


def export_options(args: argparse.Namespace):
    from forgeline.export import ExportOptions

    return ExportOptions(preset=args.preset, seed=args.seed, weights=args.weights, overwrite=args.overwrite,
                         from_hf=args.from_hf, generation_graphs=not args.no_generation_graphs)


def compile_options(args: argparse.Namespace):
    from forgeline.compile import CompileOptions

    return CompileOptions(target=args.target, arch=args.arch, mcpu=args.mcpu, precision=args.precision,
                          attention_precision=args.attention_precision, vm=args.vm)


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
