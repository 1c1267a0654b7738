"""Valid random inputs for a model's graph, from its input specs: the one generator every stage uses.

Export draws the golden cases with it, tuning checks its bucket builds with it, and the bench
times with it, so "a valid input" means the same thing everywhere: ids inside their value range,
masks of 0/1 (or all ones when every token should be real), floats standard normal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .errors import InputError
from .format import TensorSpec


def symbolic_dims(specs: Sequence[TensorSpec]) -> list[str]:
    """The symbolic dims in the order the inputs first name them: (batch, seq), (batch, src_seq, tgt_seq)."""
    return list(dict.fromkeys(d for s in specs for d in s.dims if isinstance(d, str)))


def random_inputs(specs: Sequence[TensorSpec], dims: Mapping[str, int], seed: int, *,
                  limits: Mapping[str, int | None] | None = None,
                  real_masks: bool = False) -> dict[str, np.ndarray]:
    """One array per spec, in spec order, at the given symbolic sizes; a sentence for a bad size."""
    _check_dims(specs, dims, limits or {})
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = tuple(dims[d] if isinstance(d, str) else d for d in spec.dims)
        if real_masks and "mask" in spec.name:
            arrays[spec.name] = np.ones(shape, dtype=spec.dtype)  # every token real
        elif np.issubdtype(np.dtype(spec.dtype), np.floating):
            arrays[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            lo, hi = spec.value_range or (0, 2)
            arrays[spec.name] = rng.integers(lo, hi, size=shape).astype(spec.dtype)
    return arrays


def _check_dims(specs: Sequence[TensorSpec], dims: Mapping[str, int], limits: Mapping[str, int | None]) -> None:
    for name in symbolic_dims(specs):
        if name not in dims:
            raise InputError(f"random inputs need a size for dim {name!r}; got {dict(dims)}.")
        limit = limits.get(name)
        if dims[name] < 1 or (limit is not None and dims[name] > limit):
            raise InputError(f"dim {name}={dims[name]} is outside 1..{limit or 'unbounded'}; choose a size in range.")


__all__ = ["random_inputs", "symbolic_dims"]
