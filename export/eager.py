"""Eager PyTorch as the reference: reference inputs, their outputs, and output specs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from forgeline.define import ForgelineModel
from forgeline.runtime.format import TensorSpec, symbolic_sizes
from forgeline.runtime.golden import GoldenCase
from forgeline.runtime.inputs import symbolic_dims

# Golden shapes: batch 1 (a decoder MoE group of one token) and batch 3, at sequence lengths that
# differ from the trace sizes and from each other, so one dynamic build is proven at two shapes.
GOLDEN_BATCH = (1, 3, 2, 4)
GOLDEN_SEQ = (11, 24, 5, 17)


def golden_dims(model: ForgelineModel, index: int) -> dict[str, int]:
    dims: dict[str, int] = {}
    limits = model.dim_limits()
    names = symbolic_dims(model.input_specs())
    for offset, name in enumerate(names):
        if name == "batch":
            dims[name] = GOLDEN_BATCH[index % len(GOLDEN_BATCH)]
            continue
        size = GOLDEN_SEQ[index % len(GOLDEN_SEQ)] + 2 * offset  # src/tgt lengths differ
        limit = limits.get(name)
        dims[name] = min(size, limit) if limit else size
    return dims


def random_inputs(model: ForgelineModel, dims: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    tensors = model.example_inputs(dims, torch.Generator().manual_seed(seed))
    return {s.name: t.numpy() for s, t in zip(model.input_specs(), tensors)}


@torch.no_grad()
def run_eager(model: ForgelineModel, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Eager PyTorch outputs, named, for inputs given as numpy arrays."""
    args = [torch.from_numpy(np.ascontiguousarray(arrays[s.name])) for s in model.input_specs()]
    outs = model(*args)
    return {name: t.detach().cpu().numpy() for name, t in zip(model.output_names(), outs)}


def make_case(model: ForgelineModel, dims: dict[str, int], seed: int, name: str) -> GoldenCase:
    inputs = random_inputs(model, dims, seed)
    return GoldenCase(name, inputs, run_eager(model, inputs))


def case_sizes(model: ForgelineModel, case: GoldenCase) -> dict[str, int]:
    """The size of each symbolic dim in a case's inputs."""
    specs = model.input_specs()
    return symbolic_sizes(specs, [case.inputs[s.name] for s in specs])


def output_specs(model: ForgelineModel, cases: list[GoldenCase]) -> list[TensorSpec]:
    """Name each output axis by the symbolic dim whose size it tracks across the golden cases."""
    specs = [TensorSpec(s.name, s.dtype, tuple(s.dims)) for s in model.input_specs()]
    return output_specs_for(specs, model.output_names(), cases)


def output_specs_for(inputs: list[TensorSpec], names: list[str], cases: list[GoldenCase]) -> list[TensorSpec]:
    """Output specs of a graph with these inputs: each axis named by the symbolic dim whose size it
    tracks across the cases, a fixed size where it never changes, "?" otherwise."""
    case_dims = [symbolic_sizes(inputs, [c.inputs[s.name] for s in inputs]) for c in cases]
    specs = []
    for name in names:
        shapes = [c.outputs[name].shape for c in cases]
        dims = tuple(_axis_name(axis, shapes, case_dims) for axis in range(len(shapes[0])))
        specs.append(TensorSpec(name, str(cases[0].outputs[name].dtype), dims))
    return specs


def _axis_name(axis: int, shapes: list[tuple[int, ...]], case_dims: list[dict[str, int]]) -> str | int:
    sizes = [s[axis] for s in shapes]
    for dim in case_dims[0]:
        if all(cd[dim] == size for cd, size in zip(case_dims, sizes)):
            return dim
    return sizes[0] if len(set(sizes)) == 1 else "?"
