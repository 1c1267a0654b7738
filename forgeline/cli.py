"""`forgeline …`: the command-line driver, the successor of tvmc for Relax.

Each subcommand registers itself with the one `main` through `@command`. Library code logs; only
this module prints. User mistakes end in `error: <sentence>` and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from forgeline.runtime.errors import ForgelineError, InputError

_COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = []


def command(name: str, help_text: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register a subcommand: its name, its help line, a function adding its arguments."""

    def register(run: Callable[[argparse.Namespace], int]):
        _COMMANDS.append((name, help_text, configure, run))
        return run

    return register


# ---------------------------------------------------------------------------------------------- args


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name, e.g. gpt, bert, transformer, gpt-moe (see `forgeline models`)")
    p.add_argument("--preset", default="tiny", help="size preset: tiny, small or base (default: tiny)")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder to write the bundle into")
    p.add_argument("--seed", type=int, default=0, help="seed for the weight init and golden inputs")
    p.add_argument("--weights", type=Path, help="a forgeline safetensors checkpoint to export instead of a fresh init")
    p.add_argument("--from-hf", type=Path, metavar="FOLDER",
                   help="import a Hugging Face BERT or GPT-2 folder (config.json + weights; its tokenizer.json ships too)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact in the output folder")
    p.add_argument("--no-generation-graphs", action="store_true",
                   help="gpt/transformer: skip the KV-cache prefill/decode graphs that generate/translate need")


def _compile_args(p: argparse.ArgumentParser, with_path: bool = True) -> None:
    if with_path:
        p.add_argument("path", type=Path, help="bundle or artifact folder")
    p.add_argument("--target", default="cpu", help="target preset: cpu (this host's CPU) or cuda (default: cpu)")
    p.add_argument("--arch", help="CUDA architecture for --target cuda (default: sm_90)")
    p.add_argument("--mcpu", help="LLVM CPU name for --target cpu (default: detected from this host)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="precision of the dense matmuls: fp32 (default) or bf16 on AMX CPUs; "
                        "routers, norms and softmax stay fp32")
    from forgeline.commands_tune import add_tuning_flags

    add_tuning_flags(p)


def _build_args(p: argparse.ArgumentParser) -> None:
    _export_args(p)
    _compile_args(p, with_path=False)


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="artifact folder")
    p.add_argument("--inputs", required=True, type=Path, help=".npz file with one array per model input")
    p.add_argument("-o", "--output", required=True, type=Path, help=".npz file to write the outputs to")
    _backend_args(p)


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="tvm", choices=["tvm", "ort"], help="runtime backend (default: tvm)")
    p.add_argument("--target", help="TVM build tag or kind (cpu, cuda); default: the best one this host can run")


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="artifact folder")
    p.add_argument("--fresh", type=int, default=2, help="fresh random input cases besides the golden ones (default: 2)")


# ------------------------------------------------------------------------------------------ commands


@command("models", "list model names, families, routers and presets", lambda p: None)
def _models(args: argparse.Namespace) -> int:
    from forgeline.define import list_models

    rows = [(m.name, m.family, m.router, ",".join(m.presets), m.description) for m in list_models()]
    _print_table(("model", "family", "router", "presets", "description"), rows)
    return 0


@command("export", "export a model to an ONNX bundle with golden vectors", _export_args)
def _export(args: argparse.Namespace) -> int:
    from forgeline.export import export_model

    manifest = export_model(args.model, args.output, _export_options(args))
    print(f"exported {manifest.name}/{manifest.preset} to {args.output}")
    _print_stages(manifest)
    return 0


@command("compile", "compile a bundle with TVM for a target and check it", _compile_args)
def _compile(args: argparse.Namespace) -> int:
    from forgeline.commands_tune import print_buckets, tune_options
    from forgeline.compile import compile_artifact

    manifest = compile_artifact(args.path, _compile_options(args), tune=tune_options(args))
    print_buckets(manifest)
    for build in manifest.builds.values():
        print(f"build {build.tag}: {build.lib} ({build.build_seconds:.1f} s){' - ' + build.note if build.note else ''}")
    _print_stages(manifest)
    return 0


@command("build", "export + compile (+ tune) + check: the main job", _build_args)
def _build(args: argparse.Namespace) -> int:
    from forgeline.api import build
    from forgeline.commands_tune import tune_options

    report = build(args.model, args.output, _export_options(args), _compile_options(args), tune=tune_options(args))
    print(f"built {args.model}/{'hf' if args.from_hf else args.preset} in {args.output}")
    return _print_report(report)


@command("run", "run an artifact on inputs from an .npz file", _run_args)
def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from forgeline.runtime import load

    if not args.inputs.is_file():
        raise InputError(f"inputs file {args.inputs} does not exist; pass an .npz with one array per model input.")
    model = load(args.path, backend=args.backend, target=args.target)
    try:
        with np.load(args.inputs, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"{args.inputs} is not a readable .npz file ({exc}).") from exc
    outputs = model.run(**arrays)
    np.savez(args.output, **outputs)
    for name, value in outputs.items():
        print(f"{name}: {value.dtype} {tuple(value.shape)}")
    print(f"ran {model.stage}; wrote {args.output}")
    return 0


@command("check", "compare every stage with eager PyTorch (golden + fresh inputs)", _check_args)
def _check(args: argparse.Namespace) -> int:
    from forgeline.check import check_artifact

    return _print_report(check_artifact(args.path, fresh_cases=args.fresh))


# ------------------------------------------------------------------------------------------- helpers


def _export_options(args: argparse.Namespace):
    from forgeline.export import ExportOptions

    return ExportOptions(preset=args.preset, seed=args.seed, weights=args.weights, overwrite=args.overwrite,
                         from_hf=args.from_hf, generation_graphs=not args.no_generation_graphs)


def _compile_options(args: argparse.Namespace):
    from forgeline.compile import CompileOptions

    return CompileOptions(target=args.target, arch=args.arch, mcpu=args.mcpu, precision=args.precision)


def _print_stages(manifest) -> None:
    for stage in manifest.stages.values():
        print(f"  {stage.stage}: {'pass' if stage.passed else 'FAIL'} vs eager PyTorch")


def _print_report(report) -> int:
    from forgeline.runtime.parity import summarize

    rows = []
    for stage in report.stages:
        tol = stage.tolerance
        for output, (max_abs, max_rel, ok) in summarize(stage).items():
            exact = output.startswith("routing.")
            rows.append((stage.stage, output, f"{max_abs:.2e}", f"{max_rel:.2e}",
                         "exact" if exact else f"{tol.atol:g}/{tol.rtol:g}", "pass" if ok else "FAIL"))
    _print_table(("stage vs eager", "output", "max abs", "max rel", "atol/rtol", "result"), rows)
    for stage, why in report.skipped.items():
        print(f"{stage}: not run on this host ({why})")
    print("all stages match eager PyTorch" if report.passed else "some stages do NOT match eager PyTorch")
    return 0 if report.passed else 1


def _print_table(header: tuple[str, ...], rows: list[tuple]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for line in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip())


# Modules that register further subcommands with @command (one per capability), imported when
# the parser is built so that `forgeline --help` lists them all.
COMMAND_MODULES: tuple[str, ...] = ("forgeline.commands_bert", "forgeline.commands_train", "forgeline.commands_tune", "forgeline.commands_generate", "forgeline.commands_bench")


def _parser() -> argparse.ArgumentParser:
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(
        prog="forgeline",
        description="Export PyTorch Transformers to ONNX, compile them with TVM, and check every stage.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, configure, run in _COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    # forgeline's own progress at INFO; other libraries (onnx_ir logs every pass) only when verbose.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("forgeline").setLevel(level)
    try:
        return args.run(args)
    except ForgelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
