"""What a user's own module and a user's ONNX file share on the way into a bundle.

Both are described by their ONNX graph: input names, dtypes and symbolic dims are read from the
file, never guessed from the model. Golden cases are drawn at shapes the graph allows, the
reference (eager PyTorch or ONNX Runtime) computes their outputs, and the bundle is finished as a
registry model's is: golden.npz, file hashes, and ONNX Runtime's measured error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from forgeline.runtime.format import DEFAULT_TOLERANCE, GOLDEN_FILE, Manifest, TensorSpec, symbolic_sizes
from forgeline.runtime.golden import GoldenCase, save_golden
from forgeline.runtime.inputs import symbolic_dims

from .bundle import seal_bundle
from .eager import GOLDEN_BATCH, GOLDEN_SEQ, output_specs_for

# Ops an id passes through unchanged on its way to an embedding table (exporters add views and casts).
_ID_PASSTHROUGH = {"Reshape", "Cast", "Flatten", "Squeeze", "Unsqueeze", "Identity"}

Reference = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def specs_from_onnx(model) -> list[TensorSpec]:
    """The graph's real inputs (initializers listed as inputs are weights) as TensorSpecs."""
    from onnx.helper import tensor_dtype_to_np_dtype

    weights = {init.name for init in model.graph.initializer}
    specs = []
    for value in (v for v in model.graph.input if v.name not in weights):
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or f"{value.name}_{axis}"
                     for axis, d in enumerate(tensor.shape.dim))
        dtype = str(np.dtype(tensor_dtype_to_np_dtype(tensor.elem_type)))
        specs.append(TensorSpec(value.name, dtype, dims, _id_range(model, value.name, dtype)))
    return specs


def _id_range(model, name: str, dtype: str) -> tuple[int, int] | None:
    """[0, rows) when integer input ``name`` indexes an embedding table (a Gather on an initializer)."""
    if not np.issubdtype(np.dtype(dtype), np.integer):
        return None
    tables = {init.name: list(init.dims) for init in model.graph.initializer}
    names, seen = [name], set()
    while names:
        current = names.pop()
        seen.add(current)
        for node in model.graph.node:
            if current not in node.input:
                continue
            if node.op_type == "Gather" and node.input[1] == current and node.input[0] in tables:
                return (0, int(tables[node.input[0]][0]))
            if node.op_type in _ID_PASSTHROUGH and node.input[0] == current:
                names += [out for out in node.output if out not in seen]
    return None


def golden_sizes(dims: list[str], index: int, leading: set[str], limits: Mapping[str, int | None],
                 avoid: Mapping[str, int] | None = None) -> dict[str, int]:
    """Sizes for case ``index``: batch-like (leading-axis) dims from GOLDEN_BATCH, others from
    GOLDEN_SEQ, each different from ``avoid`` (the example's sizes) and within its limit."""
    sizes = {}
    for offset, dim in enumerate(dims):
        table = GOLDEN_BATCH if dim in leading else GOLDEN_SEQ
        size = table[index % len(table)] + (0 if dim in leading else 2 * offset)
        if avoid and size == avoid.get(dim):
            size += 1
        limit = limits.get(dim)
        sizes[dim] = min(size, limit) if limit else size
    return sizes


def leading_dims(specs: list[TensorSpec]) -> set[str]:
    return {s.dims[0] for s in specs if s.dims and isinstance(s.dims[0], str)}


def make_cases(inputs: list[dict[str, np.ndarray]], reference: Reference) -> list[GoldenCase]:
    return [GoldenCase(f"case{i}", arrays, reference(arrays)) for i, arrays in enumerate(inputs)]


def finish_bundle(out: Path, manifest: Manifest, cases: list[GoldenCase]) -> Manifest:
    """Write golden.npz, hash every file, save the manifest, and measure ONNX Runtime against it."""
    save_golden(out / GOLDEN_FILE, cases)
    manifest.outputs = output_specs_for(manifest.inputs, list(cases[0].outputs), cases)
    manifest.golden_cases = [{d: int(s) for d, s in _case_dims(manifest.inputs, c).items()} for c in cases]
    return seal_bundle(out, manifest)


def _case_dims(specs: list[TensorSpec], case: GoldenCase) -> dict[str, int]:
    return symbolic_sizes(specs, [case.inputs[s.name] for s in specs])


def new_manifest(name: str, source: str, config: dict, specs: list[TensorSpec],
                 limits: Mapping[str, int | None], versions: dict[str, str]) -> Manifest:
    """A bundle manifest for a model outside the registry; outputs are filled in by finish_bundle."""
    return Manifest(name=name, preset=source, family=source, config=config, inputs=specs, outputs=[],
                    dim_limits={d: limits.get(d) for d in symbolic_dims(specs)}, tolerance=DEFAULT_TOLERANCE,
                    versions=versions, source=source)


__all__ = ["finish_bundle", "golden_sizes", "leading_dims", "make_cases", "new_manifest", "specs_from_onnx"]
