"""Vectorizable exp / tanh / erf for CPU builds (GELU, softmax), within fp32 parity.

LLVM lowers a vector ``exp`` or ``tanh`` to one libm call per lane, so untuned gpt-small spent
~6 ms of ~26 in its GELU epilogues and ~1.7 ms in softmax, against ~0.5 ms for the GEMMs
those epilogues sit on. TVM's ``FastMathTransform`` swaps ``exp``/``tanh``/``erf``/``softmax``
for TOPI's polynomial versions (Eigen's approximations, a few ulp in fp32), which are plain
arithmetic and vectorize. GELU reaches the importer as one ``nn.gelu``/``nn.gelu_tanh`` op, which
that pass does not look into, so it is written out in ``erf``/``tanh`` first.

Measured parity stays at the 1e-7..1e-6 level of the exact build (tolerance: atol 1e-4,
rtol 1e-3, runtime/format.py).
"""

from __future__ import annotations

import logging
import math

logger = logging.getLogger(__name__)


def _gelu_erf(x):
    from tvm import relax

    half = relax.const(0.5, "float32")
    inv_sqrt2 = relax.const(1.0 / math.sqrt(2.0), "float32")
    one = relax.const(1.0, "float32")
    # 0.5 * x * (1 + erf(x / sqrt(2)))
    return relax.op.multiply(relax.op.multiply(half, x),
                             relax.op.add(one, relax.op.erf(relax.op.multiply(x, inv_sqrt2))))


def _gelu_tanh(x):
    from tvm import relax

    half = relax.const(0.5, "float32")
    one = relax.const(1.0, "float32")
    scale = relax.const(math.sqrt(2.0 / math.pi), "float32")
    cubic = relax.const(0.044715, "float32")
    # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
    inner = relax.op.add(x, relax.op.multiply(cubic, relax.op.multiply(x, relax.op.multiply(x, x))))
    return relax.op.multiply(relax.op.multiply(half, x),
                             relax.op.add(one, relax.op.tanh(relax.op.multiply(scale, inner))))


def _decompose_gelu(mod):
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    mod = mod.clone()
    x = wildcard()
    rules = {"relax.nn.gelu": _gelu_erf, "relax.nn.gelu_tanh": _gelu_tanh}
    for op_name, expand in rules.items():
        pattern = is_op(op_name)(x)

        def rewrite(call, matches, expand=expand):
            if getattr(call.ty, "dtype", None) != "float32":
                return call
            return expand(matches[x])

        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gvar] = rewrite_call(pattern, rewrite, func)
    return mod


def fast_math(mod):
    """``mod`` with GELU written out and exp/tanh/erf/softmax on vectorizable approximations."""
    from tvm import relax

    from forgeline.compile.symbolic_rows import name_compound_rows

    from .softmax import lanes_softmax

    # Attention softmax first: its lane kernel has its own exp (softmax.py).
    # Compound row counts are named after the rewrites (rewrite_call re-derives shapes, which would
    # undo it) and before FastMathTransform legalizes erf with the shapes it sees.
    mod = relax.transform.FastMathTransform()(name_compound_rows(_decompose_gelu(lanes_softmax(mod))))
    logger.info("Using vectorizable exp/tanh/erf (TVM FastMathTransform).")
    return mod


__all__ = ["fast_math"]
