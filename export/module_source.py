"""A user's own ``nn.Module`` into a bundle: its eager outputs are the reference.

The module is exported with torch.onnx (dynamo) at the example inputs, with ``dynamic_shapes`` in
torch.export's convention. The graph's inputs and symbolic dims are read back from the file. The
golden cases are the example itself and two more at other sizes of every dynamic dim, and eager
PyTorch computes their outputs. The artifact keeps no checkpoint (forgeline cannot rebuild the
module), so `forgeline check` later compares with these stored outputs.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forgeline.runtime.errors import ConfigError, ExportError, error_summary
from forgeline.runtime.format import ONNX_FILE, Manifest, TensorSpec, symbolic_sizes
from forgeline.runtime.inputs import symbolic_dims

from .foreign import finish_bundle, golden_sizes, leading_dims, make_cases, new_manifest, specs_from_onnx
from .onnx_export import export_graph

log = logging.getLogger(__name__)

UNBOUNDED = 1 << 30  # a Dim max at or past this is no real limit


@dataclass(frozen=True, kw_only=True)
class ModuleSource:
    """An nn.Module and how to trace it; names default to forward's parameters and "output{i}"."""

    module: torch.nn.Module
    example_inputs: tuple = ()  # positional tensors
    example_kwargs: Mapping[str, torch.Tensor] = field(default_factory=dict)  # keyword tensors
    dynamic_shapes: Any = None  # torch.export's convention: per input {axis: Dim}, or None
    input_names: Sequence[str] | None = None
    output_names: Sequence[str] | None = None
    name: str | None = None  # the artifact's model name; the class name by default


def export_module_into(source: ModuleSource, out: Path, versions: dict[str, str]) -> Manifest:
    """Export ``source`` into the empty folder ``out`` and measure ONNX Runtime against eager."""
    module = source.module.eval()
    args, kwargs = _example(source)
    names = _input_names(source, module)
    eager_outputs = _run(module, args, kwargs)
    outputs = list(source.output_names or _default_output_names(eager_outputs))
    if len(outputs) != len(eager_outputs):
        raise ConfigError(f"output_names gives {len(outputs)} name(s) but {type(module).__name__} returns "
                          f"{len(eager_outputs)} tensor(s).")
    log.info("export %s -> %s (inputs %s, outputs %s)", type(module).__name__, out, names, outputs)
    export_graph(module, args, kwargs, out / ONNX_FILE, input_names=names, output_names=outputs,
                 dynamic_shapes=source.dynamic_shapes)
    import onnx

    specs = specs_from_onnx(onnx.load(str(out / ONNX_FILE), load_external_data=False))
    example = dict(zip(names, [*args, *kwargs.values()]))
    limits = _dim_limits(source.dynamic_shapes)
    manifest = new_manifest(source.name or type(module).__name__, "module",
                            {"class": f"{type(module).__module__}.{type(module).__qualname__}"}, specs, limits,
                            versions)

    def reference(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # An input the exporter dropped (forward never reads it) keeps its example value.
        tensors = [torch.from_numpy(arrays[n]) if n in arrays else example[n] for n in names]
        return dict(zip(outputs, _run(module, tuple(tensors[:len(args)]), dict(zip(kwargs, tensors[len(args):])))))

    return finish_bundle(out, manifest, make_cases(_case_inputs(specs, names, example, limits), reference))


def _example(source: ModuleSource) -> tuple[tuple, dict]:
    args = source.example_inputs if isinstance(source.example_inputs, tuple) else (source.example_inputs,)
    kwargs = dict(source.example_kwargs)
    for name, value in [*enumerate(args), *kwargs.items()]:
        if not isinstance(value, torch.Tensor):
            raise ConfigError(f"example input {name} is a {type(value).__name__}; pass tensors only.")
    if not args and not kwargs:
        raise ConfigError("building a module needs example_inputs: a tuple of tensors forward takes.")
    return args, kwargs


def _input_names(source: ModuleSource, module: torch.nn.Module) -> list[str]:
    count = len(source.example_inputs) if isinstance(source.example_inputs, tuple) else 1
    if source.input_names is not None:
        names = list(source.input_names)
        if len(names) != count + len(source.example_kwargs):
            raise ConfigError(f"input_names gives {len(names)} name(s) for {count + len(source.example_kwargs)} "
                              "example input(s).")
        return names
    params = [p.name for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    positional = params[:count] if len(params) >= count else [f"input{i}" for i in range(count)]
    return positional + list(source.example_kwargs)


def _run(module: torch.nn.Module, args: tuple, kwargs: dict) -> list[np.ndarray]:
    """The module's outputs (a tensor, a tuple/list of tensors or a dict of them) as arrays, in order."""
    try:
        with torch.no_grad():
            result = module(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's forward can raise anything
        raise ExportError(f"{type(module).__name__} raised {type(exc).__name__} on the example inputs: "
                          f"{error_summary(exc)}.") from exc
    values = list(result.values()) if isinstance(result, dict) else (
        list(result) if isinstance(result, (tuple, list)) else [result])
    if not values or not all(isinstance(v, torch.Tensor) for v in values):
        raise ExportError(f"{type(module).__name__} must return a tensor, or a tuple, list or dict of tensors.")
    return [v.detach().cpu().numpy() for v in values]


def _default_output_names(outputs: list[np.ndarray]) -> list[str]:
    return ["output"] if len(outputs) == 1 else [f"output{i}" for i in range(len(outputs))]


def _dim_limits(dynamic_shapes: Any) -> dict[str, int | None]:
    """Each named torch.export Dim's max (None when unbounded), found anywhere in ``dynamic_shapes``."""
    limits: dict[str, int | None] = {}
    stack = [dynamic_shapes]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack += list(item.values())
        elif isinstance(item, (list, tuple)):
            stack += list(item)
        elif hasattr(item, "__name__") and hasattr(item, "max"):
            top = item.max
            limits[item.__name__] = int(top) if isinstance(top, int) and top < UNBOUNDED else None
    return limits


def _case_inputs(specs: list[TensorSpec], names: list[str], example: dict[str, torch.Tensor],
                 limits: dict[str, int | None]) -> list[dict[str, np.ndarray]]:
    """The example, then two cases at other sizes of every dynamic dim (same dtypes and value ranges)."""
    arrays = {n: t.detach().cpu().numpy() for n, t in example.items()}
    dims = symbolic_dims(specs)
    example_sizes = symbolic_sizes(specs, [arrays[s.name] for s in specs])
    cases = [{s.name: arrays[s.name] for s in specs}]
    if not dims:
        return cases  # a static graph has one shape
    rng = np.random.default_rng(0)
    for index in range(2):
        sizes = golden_sizes(dims, index, leading_dims(specs), limits, avoid=example_sizes)
        cases.append({n: _like(arrays[n], _spec(specs, n), sizes, rng) for n in names if _spec(specs, n)})
    return cases


def _spec(specs: list[TensorSpec], name: str) -> TensorSpec | None:
    return next((s for s in specs if s.name == name), None)


def _like(example: np.ndarray, spec: TensorSpec, sizes: dict[str, int], rng) -> np.ndarray:
    """A random array shaped by ``sizes`` with the example's dtype: floats normal, integers and
    booleans within the example's own range of values."""
    shape = tuple(sizes[d] if isinstance(d, str) else d for d in spec.dims)
    if np.issubdtype(example.dtype, np.floating):
        return rng.standard_normal(shape).astype(example.dtype)
    lo, hi = (int(example.min()), int(example.max()) + 1) if example.size else (0, 2)
    return rng.integers(lo, hi, size=shape).astype(example.dtype)


__all__ = ["ModuleSource", "export_module_into"]
