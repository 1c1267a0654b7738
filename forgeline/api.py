"""The main job as one call: export, compile, check."""

from __future__ import annotations

from pathlib import Path

from forgeline.check import CheckReport, check_artifact
from forgeline.compile import CompileOptions, compile_artifact
from forgeline.compile.artifact import resolve_precision_target
from forgeline.compile.tuning import TuneOptions
from forgeline.export import ExportOptions, export_into
from forgeline.runtime.artifact_io import staged_artifact


def build(
    name: str | None,
    out_dir: str | Path,
    export_options: ExportOptions = ExportOptions(),
    compile_options: CompileOptions = CompileOptions(),
    tune: TuneOptions | None = None,
) -> CheckReport:
    """Export ``name``, compile (and optionally tune) it for one target, and check every stage.

    ``name`` may be None with ``export_options.from_hf``: the checkpoint's config.json names it.

    The whole artifact is built in a staging folder beside ``out_dir`` and swapped in only once it
    is complete, so a build that fails, is killed or is interrupted leaves ``out_dir`` as it was
    (with ``overwrite``, the previous artifact stays until the new one replaces it).
    """
    resolve_precision_target(compile_options, tune)  # a refusal (bf16 without AMX) before export
    with staged_artifact(Path(out_dir), export_options.overwrite) as staged:
        export_into(name, staged, export_options)
        compile_artifact(staged, compile_options, tune=tune)
    return check_artifact(out_dir)
