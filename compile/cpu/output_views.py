"""A reshape that returns a function's output becomes a view, not a copy.

The reduced-precision dense kernels write ``(rows, N)`` and a reshape gives the graph back its
``(batch, seq, N)``. TVM's ``RewriteDataflowReshape`` turns such reshapes into views, but only for
dataflow variables, so the one bound to the function's output (the LM head's logits, the
largest tensor of the pass) stays a kernel that copies it. Binding the reshape to a dataflow
variable first and the output to that variable lets it become a view as well. The memory planner
follows views (it already does for every inner reshape), so the dense kernel's output buffer is
the one returned.
"""

from __future__ import annotations

import logging

from forgeline.compile.dataflow_blocks import rewrite_dataflow_blocks

logger = logging.getLogger(__name__)


def _is_reshape(mod, value) -> bool:
    import tvm
    from tvm import relax

    if not (isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.call_tir"):
        return False
    callee, args = value.args[0], value.args[1]
    func = mod.functions.get(callee) if isinstance(callee, tvm.ir.GlobalVar) else None
    # one input, as RewriteDataflowReshape asks: the pattern analysis fails on the GEMM kernels
    return (isinstance(func, tvm.tirx.PrimFunc) and isinstance(args, relax.Tuple) and len(args.fields) == 1
            and relax.analysis.has_reshape_pattern(func))


def view_output_reshapes(mod):
    """``mod`` (legalized and fused) with each reshape bound to a dataflow block's output
    rebound through a dataflow variable, for ``RewriteDataflowReshape`` to make it a view."""
    from tvm import relax

    def rewrite(block):
        bindings, count = [], 0
        for binding in block.bindings:
            if (isinstance(binding, relax.VarBinding) and not isinstance(binding.var, relax.DataflowVar)
                    and _is_reshape(mod, binding.value)):
                inner = relax.DataflowVar(binding.var.name + "_view", binding.var.ty)
                bindings += [relax.VarBinding(inner, binding.value), relax.VarBinding(binding.var, inner)]
                count += 1
            else:
                bindings.append(binding)
        return relax.DataflowBlock(bindings), count

    mod = mod.clone()  # leave the caller's module be
    count = rewrite_dataflow_blocks(mod, rewrite)
    logger.info("%d output reshape(s) made views.", count)
    return mod


__all__ = ["view_output_reshapes"]
