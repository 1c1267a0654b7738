"""Check arrays handed to a model against its declared inputs, before any backend sees them.

A compiled kernel given an out-of-range id reads outside its table instead of raising, and a wrong
dtype can crash the process, so the runtime refuses bad input here with a sentence that names the
input, what was expected and what was given.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import InputError
from .format import TensorSpec
from .limits import batch_limit, check_names


def validate_inputs(
    arrays: Mapping[str, object],
    specs: list[TensorSpec],
    dim_limits: Mapping[str, int | None],
) -> list[np.ndarray]:
    """Return the inputs as arrays in graph order, or raise InputError."""
    check_names(arrays, specs)
    bound: dict[str, tuple[int, str]] = {}  # symbolic dim -> (size, input that fixed it)
    ordered = []
    for spec in specs:
        array = _as_array(spec, arrays[spec.name])
        _check_shape(spec, array, bound, dim_limits)
        _check_range(spec, array)
        ordered.append(array)
    return ordered


def _as_array(spec: TensorSpec, value: object) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype != np.dtype(spec.dtype):
        raise InputError(
            f"input {spec.name} has dtype {array.dtype} but the model expects {spec.dtype}; "
            f"convert it, e.g. array.astype(np.{spec.dtype})."
        )
    return np.ascontiguousarray(array)


def _check_shape(
    spec: TensorSpec,
    array: np.ndarray,
    bound: dict[str, tuple[int, str]],
    dim_limits: Mapping[str, int | None],
) -> None:
    want = "(" + ", ".join(str(d) for d in spec.dims) + ")"
    if array.ndim != len(spec.dims):
        raise InputError(
            f"input {spec.name} has rank {array.ndim} (shape {array.shape}) but the model expects "
            f"rank {len(spec.dims)} with shape {want}."
        )
    for axis, (dim, size) in enumerate(zip(spec.dims, array.shape)):
        if isinstance(dim, int):
            if size != dim:
                raise InputError(f"input {spec.name} has size {size} on axis {axis} but the model expects {dim}.")
            continue
        if size < 1:
            raise InputError(f"input {spec.name} has an empty axis {axis} ({dim}); give at least one element.")
        limit = dim_limits.get(dim)
        if limit is not None and size > limit:
            why = ("the artifact's batch limit); split the inputs into several calls." if dim == "batch"
                   else "its position table); shorten the input.")
            raise InputError(f"input {spec.name} has {dim}={size} but the model supports at most {dim}={limit} ({why}")
        if dim in bound and bound[dim][0] != size:
            other_size, other = bound[dim]
            raise InputError(
                f"input {spec.name} has {dim}={size} on axis {axis} but input {other} has {dim}={other_size}; "
                f"inputs sharing the dimension {dim} must agree, expected shape {want}."
            )
        bound.setdefault(dim, (size, spec.name))


def _check_range(spec: TensorSpec, array: np.ndarray) -> None:
    if spec.value_range is None or array.size == 0:
        return
    lo, hi = spec.value_range
    bad = (array < lo) | (array >= hi)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            f"input {spec.name} holds {int(array[index])} at index {index}, outside the valid range "
            f"[{lo}, {hi}) (the vocabulary or type table size); {int(bad.sum())} value(s) are out of range."
        )


def graph_dim_limits(manifest) -> dict[str, int | None]:
    """A limit for every symbolic dim of every graph (main, prefill, decode, encode).

    Dims the manifest already bounds keep their limit. Any other dim counts positions, so it is
    bounded by the position table: ``past`` (the KV cache length) by max_positions - 1, since the
    token a decode step adds takes position ``past``; beyond that the compiled graph would read past
    its position table (garbage, or a crash). ``batch`` gets limits.DEFAULT_MAX_BATCH unless the
    manifest states its own.
    """
    positions = manifest.config.get("max_positions")
    limits = dict(manifest.dim_limits)
    specs = [*manifest.inputs, *(s for g in manifest.graphs.values() for s in g.inputs)]
    for dim in (d for spec in specs for d in spec.dims if isinstance(d, str)):
        if dim in limits:
            continue
        if dim == "batch":
            limits[dim] = None
        elif not isinstance(positions, int) or isinstance(positions, bool) or positions < 2:
            raise InputError(f"the artifact declares no limit for the dimension {dim!r} and no max_positions "
                             "to derive one from; rebuild it with this forgeline.")
        else:
            limits[dim] = positions - 1 if dim == "past" else positions
    if "batch" in limits:
        limits["batch"] = batch_limit(limits)
    return limits


def complete_dim_limits(manifest) -> None:
    """Give older manifests (which bounded only the main graph's dims) a limit for every dim."""
    manifest.dim_limits = graph_dim_limits(manifest)
