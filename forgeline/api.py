"""The main job as one call: export, compile, check."""

from __future__ import annotations

from pathlib import Path

from forgeline.check import CheckReport, check_artifact
from forgeline.compile import CompileOptions, compile_artifact
from forgeline.compile.artifact import resolve_precision_target
from forgeline.compile.tuning import TuneOptions
from forgeline.export import ExportOptions, export_model


def build(
    name: str,
    out_dir: str | Path,
    export_options: ExportOptions = ExportOptions(),
    compile_options: CompileOptions = CompileOptions(),
    tune: TuneOptions | None = None,
) -> CheckReport:
    """Export ``name``, compile (and optionally tune) it for one target, and check every stage."""
    resolve_precision_target(compile_options, tune)  # a refusal (bf16 without AMX) before export
    export_model(name, out_dir, export_options)
    compile_artifact(out_dir, compile_options, tune=tune)
    return check_artifact(out_dir)
