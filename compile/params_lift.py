"""Lift the large constants of a compiled Relax module into one trailing ``params`` tuple.

The pipelines keep every weight a Relax constant until they have folded its layout packing
(compile/cpu/weights.py, compile/cpu/bf16.py), so every rewrite sees constants. Right after that,
``lift_params_pass`` turns each constant of ``main`` larger than ``MIN_LIFT_BYTES`` into an
element of one new last parameter, ``params: R.Tuple(...)``, and hands the lifted values to a
``LiftedParams`` sink. The library then holds kernels only: LLVM never compiles gigabytes of
constant data, and the weights go to the target's shared parameter file (params_store.py),
which the runtime maps and binds once at load.

Small constants (shapes, scalars, masks) stay in the library: a tuple element per scalar would
cost more than it saves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

MIN_LIFT_BYTES = 1024  # constants above this leave the library
PARAMS_NAME = "params"  # the trailing tuple parameter of a lifted ``main``
LIFTED_FUNCTION = "main"  # the function the runtime calls; private functions keep their constants


@dataclass
class LiftedParams:
    """Where a lifting pass puts its values: ``arrays[i]`` is element i of ``main``'s ``params``."""

    arrays: list[np.ndarray] = field(default_factory=list)


def _constant_array(constant) -> np.ndarray:
    """The constant's bytes as numpy, without a copy (a CPU tensor exports itself by DLPack)."""
    return np.from_dlpack(constant.value)


def lift_constants(mod, sink: LiftedParams, min_bytes: int = MIN_LIFT_BYTES):
    """``mod`` with ``main``'s constants over ``min_bytes`` read from a trailing ``params`` tuple."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    if LIFTED_FUNCTION not in [gv.name_hint for gv in mod.get_global_vars()]:
        return mod
    gvar = mod.get_global_var(LIFTED_FUNCTION)
    func = mod[gvar]
    if not isinstance(func, relax.Function):
        return mod
    lifted_vars: dict[int, relax.Var] = {}  # address of the constant's data -> its parameter
    arrays: list[np.ndarray] = []

    @mutator
    class _Lift(PyExprMutator):
        def visit_generic_const_(self, op):
            array = _constant_array(op)
            if array.nbytes <= min_bytes:
                return op
            key = array.__array_interface__["data"][0]
            if key not in lifted_vars:  # one parameter per tensor, however often it is used
                lifted_vars[key] = relax.Var(f"w{len(arrays)}", op.ty)
                arrays.append(array)
            return lifted_vars[key]

    body = _Lift().visit_expr(func.body)
    if not arrays:
        return mod
    num_input = len(func.params)
    new_params = [*func.params, *lifted_vars.values()]
    lifted = relax.Function(new_params, body, func.ret_ty, func.is_pure, func.attrs, func.span)
    mod = mod.clone()  # leave the caller's module as it was
    mod[gvar] = lifted.with_attr("num_input", num_input)
    mod = relax.transform.BundleModelParams(PARAMS_NAME)(mod)
    sink.arrays.extend(arrays)
    logger.info("Lifted %d constants (%.1f MB) of %s into its %r tuple.", len(arrays),
                sum(a.nbytes for a in arrays) / 1e6, LIFTED_FUNCTION, PARAMS_NAME)
    # TVM keeps the mutator class (and so this frame's cells) alive after the pass: drop the
    # references here, or every build's weights would outlive it.
    arrays.clear()
    lifted_vars.clear()
    return mod


def lift_params_pass(sink: LiftedParams, min_bytes: int = MIN_LIFT_BYTES):
    """``lift_constants`` as a module pass, for a pipeline's pass list."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="ForgelineLiftParams")
    def _lift(mod, _ctx):
        return lift_constants(mod, sink, min_bytes)

    return _lift


__all__ = ["LIFTED_FUNCTION", "LiftedParams", "MIN_LIFT_BYTES", "PARAMS_NAME", "lift_constants", "lift_params_pass"]
