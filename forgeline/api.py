"""The main job as one call: export, compile, check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forgeline.check import CheckReport, check_artifact
from forgeline.compile import CompileOptions, compile_artifact
from forgeline.compile.artifact import resolve_precision_target
from forgeline.compile.tuning import TuneOptions
from forgeline.export import ExportOptions, export_into
from forgeline.runtime.artifact_io import staged_artifact


def build(
    model: Any,
    out_dir: str | Path,
    export_options: ExportOptions = ExportOptions(),
    compile_options: CompileOptions = CompileOptions(),
    tune: TuneOptions | None = None,
    *,
    example_inputs: tuple | None = None,
    example_kwargs: dict | None = None,
    dynamic_shapes: Any = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    max_onnx_bytes: int | None = None,
    dim_limits: dict[str, int] | None = None,
    name: str | None = None,
) -> CheckReport:
    """Export ``model``, compile (and optionally tune) it for one target, and check every stage.

    ``model`` is one of the three ways in:
    - a registry name ("gpt", "bert-moe", ...; ``export_options`` picks the preset or a checkpoint);
    - an ``nn.Module``, with ``example_inputs=(tensor, ...)`` (and ``example_kwargs={...}``),
      ``dynamic_shapes`` in torch.export's convention, optional ``input_names`` and ``output_names``:
      its eager outputs are the reference;
    - the path of an ONNX file (a ``Path``, or a string ending in .onnx), with ``max_onnx_bytes`` and
      ``dim_limits`` ({"seq": 512}: a file states none): ONNX Runtime on that file is the reference.
    ``name=`` names a module's or a file's artifact.

    ``name`` may be None with ``export_options.from_hf``: the checkpoint's config.json names it.

    The whole artifact is built in a staging folder beside ``out_dir`` and swapped in only once it
    is complete, so a build that fails, is killed or is interrupted leaves ``out_dir`` as it was
    (with ``overwrite``, the previous artifact stays until the new one replaces it).
    """
    from forgeline.export.sources import export_source_into, source_of

    own = source_of(model, example_inputs=example_inputs, example_kwargs=example_kwargs,
                    dynamic_shapes=dynamic_shapes, input_names=input_names, output_names=output_names,
                    max_onnx_bytes=max_onnx_bytes, dim_limits=dim_limits, name=name)
    resolve_precision_target(compile_options, tune)  # a refusal (bf16 without AVX512-BF16 or AMX) before export
    with staged_artifact(Path(out_dir), export_options.overwrite) as staged:
        if own is None:
            export_into(model, staged, export_options)
        else:
            export_source_into(own, staged)
        compile_artifact(staged, compile_options, tune=tune)
    return check_artifact(out_dir)
