"""The three ways in: a registry name, a user's nn.Module, a user's ONNX file.

``source_of`` tells them apart; ``export_source_into`` writes the bundle of a module or a file
(a registry name goes through bundle.export_into).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from forgeline.runtime.errors import ConfigError
from forgeline.runtime.format import Manifest

from .module_source import ModuleSource, export_module_into
from .onnx_source import DEFAULT_MAX_BYTES, OnnxSource, import_onnx_into


def source_of(model: Any, *, example_inputs=None, example_kwargs=None, dynamic_shapes=None,
              input_names=None, output_names=None, max_onnx_bytes: int | None = None,
              name: str | None = None, dim_limits: dict[str, int] | None = None) -> ModuleSource | OnnxSource | None:
    """A ModuleSource for an nn.Module, an OnnxSource for an .onnx path, None for a registry name."""
    import torch

    if isinstance(model, torch.nn.Module):
        if example_inputs is None and not example_kwargs:
            raise ConfigError(f"building a {type(model).__name__} module needs example_inputs=(tensor, ...).")
        return ModuleSource(module=model, example_inputs=example_inputs or (), example_kwargs=example_kwargs or {},
                            dynamic_shapes=dynamic_shapes, input_names=input_names, output_names=output_names,
                            name=name)
    if dim_limits and isinstance(model, torch.nn.Module):
        raise ConfigError("dim_limits apply to an ONNX file; a module's limits are its Dim maxima.")
    module_only = {"example_inputs": example_inputs, "example_kwargs": example_kwargs,
                   "dynamic_shapes": dynamic_shapes, "input_names": input_names, "output_names": output_names}
    given = [key for key, value in module_only.items() if value is not None]
    if isinstance(model, os.PathLike) or (isinstance(model, str) and model.endswith(".onnx")):
        if given:
            raise ConfigError(f"{', '.join(given)} apply to an nn.Module; an ONNX file names its own inputs.")
        return OnnxSource(path=Path(model), max_bytes=DEFAULT_MAX_BYTES if max_onnx_bytes is None else max_onnx_bytes,
                          name=name, dim_limits=dict(dim_limits or {}))
    if model is None:
        return None  # the registry model a --from-hf checkpoint's config.json names (export_into)
    if not isinstance(model, str):
        raise ConfigError(f"build takes a registry name, an nn.Module or an .onnx path, not a {type(model).__name__}.")
    if given:
        raise ConfigError(f"{', '.join(given)} apply to an nn.Module, not to the registry model {model!r}.")
    return None


def export_source_into(source: ModuleSource | OnnxSource, out: Path) -> Manifest:
    from .bundle import versions

    if isinstance(source, ModuleSource):
        return export_module_into(source, out, versions())
    return import_onnx_into(source, out, versions())


__all__ = ["ModuleSource", "OnnxSource", "export_source_into", "source_of"]
