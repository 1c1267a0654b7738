"""Move every cumsum onto its last axis before TVM dispatches scans for the GPU.

TVM 0.27's ``DispatchSortScan`` sends a cumsum along the last axis to its own 2-D GPU scan, which
compiles, and any other axis to ``topi.gpu.cumsum``, whose kernel for a dynamic-size axis fails to
lower ("Find divide by zero" in the bound analyser). Token-choice routers count each expert's
slots with a cumsum over the token axis of a (tokens, experts) or (seq, batch, experts) tensor,
so gpt-moe-tc and gpt-moe-switch failed there. Transposing the axis last, scanning, and
transposing back gives the same values through the kernel that works.
"""

from __future__ import annotations

import tvm
from tvm import relax


@relax.expr_functor.mutator
class _CumsumLastAxis(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.cumsum" or call.attrs.axis is None:
            return call
        ndim = call.ty.ndim
        axis = int(call.attrs.axis) % ndim
        if ndim < 2 or axis == ndim - 1:
            return call
        order = [d for d in range(ndim) if d != axis] + [axis]  # the scanned axis last
        back = [order.index(d) for d in range(ndim)]
        moved = self.builder_.emit(relax.op.permute_dims(call.args[0], order))
        scanned = self.builder_.emit(relax.op.cumsum(moved, axis=ndim - 1, dtype=call.attrs.dtype,
                                                     exclusive=call.attrs.exclusive))
        return relax.op.permute_dims(scanned, back)


@tvm.transform.module_pass(opt_level=0, name="ForgelineCumsumLastAxis")
def cumsum_on_last_axis(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    mutator = _CumsumLastAxis(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()


__all__ = ["cumsum_on_last_axis"]
