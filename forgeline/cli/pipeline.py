"""The pipeline's commands: models, export, compile, build (the main job), run, check."""

from __future__ import annotations

import argparse
from pathlib import Path

from .files import check_output_file, read_npz, write_npz
from .options import (backend_args, build_args, build_source, compile_args, compile_options, export_args,
                      export_options, tune_options, verify_key_arg)
from .output import print_buckets, print_report, print_stages, print_table
from .registry import command


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="artifact folder")
    p.add_argument("--inputs", required=True, type=Path, help=".npz file with one array per model input")
    p.add_argument("-o", "--output", required=True, type=Path, help=".npz file to write the outputs to")
    backend_args(p)


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="artifact folder")
    p.add_argument("--fresh", type=int, default=2, help="fresh random input cases besides the golden ones (default: 2)")
    verify_key_arg(p)


# ------------------------------------------------------------------------------------------ commands


@command("models", "list model names, families, routers and presets", lambda p: None)
def _models(args: argparse.Namespace) -> int:
    from forgeline.define import list_models

    rows = [(m.name, m.family, m.router, ",".join(m.presets), m.description) for m in list_models()]
    print_table(("model", "family", "router", "presets", "description"), rows)
    return 0


@command("export", "export a model to an ONNX bundle with golden vectors", export_args)
def _export(args: argparse.Namespace) -> int:
    from forgeline.export import export_model

    manifest = export_model(args.model, args.output, export_options(args))
    print(f"exported {manifest.name}/{manifest.preset} to {args.output}")
    print_stages(manifest)
    return 0


@command("compile", "compile a bundle with TVM for a target and check it", compile_args)
def _compile(args: argparse.Namespace) -> int:
    from forgeline.compile import compile_artifact

    manifest = compile_artifact(args.path, compile_options(args), tune=tune_options(args))
    print_buckets(manifest)
    for build in manifest.builds.values():
        dense = f", {len(build.dense_layers)} dense layers on the {build.precision} rewrite" if build.dense_layers else ""
        print(f"build {build.tag}: {build.lib} ({build.build_seconds:.1f} s{dense}){' - ' + build.note if build.note else ''}")
    print_stages(manifest)
    return 0


@command("build", "export + compile (+ tune) + check: the main job", build_args)
def _build(args: argparse.Namespace) -> int:
    from forgeline.api import build
    from forgeline.runtime import Manifest

    model, source = build_source(args)
    report = build(model, args.output, export_options(args), compile_options(args), tune=tune_options(args), **source)
    if not args.quiet:  # -q: the check table alone
        name = args.model or Manifest.load(args.output).name  # --from-hf alone: config.json names it
        what = model if args.onnx else f"{name}/{'hf' if args.from_hf else args.preset}"
        print(f"built {what} in {args.output}")
    return print_report(report)


@command("run", "run an artifact on inputs from an .npz file", _run_args)
def _run(args: argparse.Namespace) -> int:
    from forgeline.runtime import Manifest, load

    manifest = Manifest.load(args.path)  # a sentence for a folder that is no artifact, before the output's checks
    arrays = read_npz(args.inputs, manifest=manifest)
    output = check_output_file(args.output, "-o", inside=args.path, suffix=".npz")
    with load(args.path, backend=args.backend, target=args.target, verify_key=args.verify_key) as model:
        outputs = model.run(**arrays)
    write_npz(output, outputs, "-o")
    for name, value in outputs.items():
        print(f"{name}: {value.dtype} {tuple(value.shape)}")
    print(f"ran {model.stage}; wrote {output}")
    return 0


@command("check", "compare every stage with eager PyTorch (golden + fresh inputs)", _check_args)
def _check(args: argparse.Namespace) -> int:
    from forgeline.check import check_artifact

    return print_report(check_artifact(args.path, fresh_cases=args.fresh, verify_key=args.verify_key))
