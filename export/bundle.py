"""Export a model into a *bundle*: model.onnx, weights, golden vectors and a manifest.

The export also runs ONNX Runtime on the golden inputs and records its error against eager
PyTorch, so the bundle states from the start how far its graph is from the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from forgeline.define import ForgelineModel, build_model, get_config, load_checkpoint, save_checkpoint
from forgeline.runtime.errors import ArtifactError, ConfigError
from forgeline.runtime.format import (
    DEFAULT_TOLERANCE,
    GOLDEN_FILE,
    ONNX_FILE,
    ORT_STAGE,
    WEIGHTS_FILE,
    Manifest,
    TensorSpec,
    Tolerance,
    set_shareable_mode,
)
from forgeline.runtime.artifact_io import staged_artifact
from forgeline.runtime.golden import GoldenCase, save_golden
from forgeline.runtime.kv_check import checked_stage
from forgeline.runtime.memory import release_freed_memory
from forgeline.runtime.model import load
from forgeline.runtime.parity import raise_if_failed
from forgeline.runtime import progress
from forgeline.runtime.validate import graph_dim_limits

from .eager import case_sizes, golden_dims, make_case, output_specs
from .kv_graphs import export_generation_graphs
from .onnx_export import export_onnx
from .shared_data import share_external_data
from .tokenizer_io import TOKENIZER_FILE, write_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """What to export and how; resolved values are logged once before work starts."""

    preset: str = "tiny"
    seed: int = 0  # seeds both the weight init and the golden inputs
    weights: Path | None = None  # a safetensors checkpoint to export instead of a fresh init
    golden_cases: int = 2  # reference inputs at distinct (batch, seq) shapes
    tolerance: Tolerance = DEFAULT_TOLERANCE
    overwrite: bool = False
    generation_graphs: bool = True  # GPT/Transformer: also export KV-cache prefill/decode graphs (kv_graphs.py)
    tokenizer: Path | None = None  # an HF tokenizer.json to ship; None ships the byte tokenizer
    from_hf: Path | None = None  # a Hugging Face checkpoint folder to import (its tokenizer.json ships too)


def export_model(name: str | None, out_dir: str | Path, options: ExportOptions = ExportOptions()) -> Manifest:
    """Export model ``name`` at ``options.preset`` into the bundle folder ``out_dir``.

    With ``options.from_hf`` the name may be None: the checkpoint's config.json names the architecture.

    The bundle is written in a staging folder beside ``out_dir`` and moved in whole once complete;
    with ``overwrite`` an existing forgeline artifact there is replaced only then (and a folder that
    is not a forgeline artifact never is).
    """
    with staged_artifact(Path(out_dir), options.overwrite) as staged:
        return export_into(name, staged, options)


def export_into(name: str | None, out: Path, options: ExportOptions = ExportOptions()) -> Manifest:
    """Export into the empty folder ``out`` (a staging folder: see ``export_model``)."""
    model = _make_model(name, options)
    log.info("export %s/%s -> %s (seed %d, %d golden cases)", model.config.name, options.preset, out, options.seed, options.golden_cases)
    save_checkpoint(model, out / WEIGHTS_FILE)
    set_shareable_mode(out / WEIGHTS_FILE)  # safetensors writes 0600
    limits = model.dim_limits()
    with progress.stage(f"export {model.config.name}/{options.preset} to ONNX"):
        export_onnx(model, out, limits)
    graphs = export_generation_graphs(model, out) if options.generation_graphs else {}
    share_external_data(out, [ONNX_FILE, *(g.onnx for g in graphs.values())], checkpoint=WEIGHTS_FILE)
    cases = [make_case(model, golden_dims(model, i), options.seed + i, f"case{i}") for i in range(options.golden_cases)]
    save_golden(out / GOLDEN_FILE, cases)
    manifest = _new_manifest(model, options, cases)
    manifest.graphs = graphs
    manifest.dim_limits = graph_dim_limits(manifest)  # past, src_seq, ...: bounded like seq
    manifest.tokenizer = _ship_tokenizer(out, model, options)
    del model  # the weights are on disk now; ONNX Runtime's check needs the memory
    release_freed_memory()  # and gets it back from malloc's heap, not on top of it
    return seal_bundle(out, manifest)


def seal_bundle(out: Path, manifest: Manifest) -> Manifest:
    """Hash every file of the bundle into the manifest, save it, and measure ONNX Runtime against it."""
    for path in sorted(out.iterdir()):
        if path.is_file() and path.name != "manifest.json":
            manifest.record_file(out, path.name)
    manifest.save(out)
    record_ort_parity(out, manifest)
    return manifest


def record_ort_parity(root: Path, manifest: Manifest) -> None:
    """Measure ONNX Runtime against the eager outputs and store the result in the manifest."""
    with progress.stage("check ONNX Runtime vs eager"), load(root, backend="ort") as model:
        manifest.stages[ORT_STAGE] = checked_stage(model)
    manifest.save(root)
    log.info("ONNX Runtime vs %s: %s", manifest.reference, "pass" if manifest.stages[ORT_STAGE].passed else "FAIL")
    raise_if_failed(manifest.stages[ORT_STAGE], manifest.reference)  # the error names every output that missed


def _ship_tokenizer(out: Path, model: ForgelineModel, options: ExportOptions) -> str | None:
    """The tokenizer given, else an imported checkpoint's own tokenizer.json, else the byte one."""
    source = options.tokenizer
    if source is None and options.from_hf is not None:
        source = Path(options.from_hf) / TOKENIZER_FILE
        if not source.is_file():
            log.info("%s has no %s: the bundle takes token ids only", options.from_hf, TOKENIZER_FILE)
            return None
    return write_tokenizer(out, model.config.vocab_size, source)


def _make_model(name: str | None, options: ExportOptions) -> ForgelineModel:
    if options.from_hf is not None:
        return _import_hf(name, options)
    if name is None:
        raise ConfigError("name a model (see `forgeline models`) or pass a Hugging Face folder with --from-hf.")
    if options.weights is not None:
        if not Path(options.weights).is_file():
            raise ArtifactError(f"weights file {options.weights} does not exist.")
        model = load_checkpoint(options.weights)
        if model.config.name != name:
            log.warning("checkpoint holds %s, exported under that name", model.config.name)
        return model
    return build_model(get_config(name, options.preset), seed=options.seed)


def _import_hf(name: str | None, options: ExportOptions) -> ForgelineModel:
    from forgeline.define.hf_import import load_hf_checkpoint

    if options.weights is not None:
        raise ConfigError("pass either --weights or --from-hf, not both.")
    model = load_hf_checkpoint(options.from_hf, seed=options.seed)
    if name is None or name == model.config.name:  # the architecture comes from config.json
        return model
    wanted = get_config(name)
    if (wanted.family, wanted.router) != (model.config.family, model.config.router):
        kind = "dense" if model.config.router == "none" else f"{model.config.router} MoE"
        raise ConfigError(f"{options.from_hf} holds a {kind} {model.config.family} model, so export it as "
                          f"{model.config.name!r} (or name no model), not {name!r}.")
    return model


def _new_manifest(model: ForgelineModel, options: ExportOptions, cases: list[GoldenCase]) -> Manifest:
    config = model.config
    inputs = [TensorSpec(s.name, s.dtype, tuple(s.dims), s.value_range) for s in model.input_specs()]
    return Manifest(
        name=config.name,
        preset="hf" if options.from_hf is not None else options.preset if options.weights is None else "checkpoint",
        family=config.family,
        config=config.to_dict(),
        inputs=inputs,
        outputs=output_specs(model, cases),
        dim_limits=model.dim_limits(),
        tolerance=options.tolerance,
        golden_cases=[case_sizes(model, c) for c in cases],
        versions=versions(),
    )


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__}
