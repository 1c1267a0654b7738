"""Give a matmul's compound symbolic row count a name of its own, before legalization.

MoE's expert GEMM has ``batch * ((seq + 1) // 2)`` rows (G*k slots per expert, define/moe.py).
With that expression as its M, every index of the scheduled kernel is a division by a
compound runtime size, TVM cannot simplify the write-back's row guard, and the GELU epilogue
runs scalar: the (4, 64, 256) x (4, 256, 1024) expert GEMM took 2.4 ms instead of 0.75
(znver5, 2 threads). ``match_cast`` to a fresh variable ``m`` gives the kernel a plain M; the
value is the same, and shapes downstream (the reshape back to (E, G, s, D)) still check it.
"""

from __future__ import annotations


def name_compound_rows(mod):
    """``mod`` with every matmul whose left operand has a compound symbolic dim (other than the
    contracted last one) fed through a ``match_cast`` to fresh variables."""
    from tvm import ir, relax, tirx

    @relax.expr_functor.mutator
    class _Namer(relax.PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.count = 0

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (isinstance(call.op, ir.Op) and call.op.name == "relax.matmul"):
                return call
            lhs = call.args[0]
            info = lhs.ty
            if not isinstance(info, relax.TensorType) or info.shape is None or info.ndim < 2:
                return call
            dims = list(info.shape.values)
            compound = [i for i, d in enumerate(dims[:-1]) if not isinstance(d, (tirx.Var, tirx.IntImm))]
            if not compound:
                return call
            for i in compound:
                dims[i] = tirx.Var(f"rows{self.count}", "int64")
                self.count += 1
            named = self.builder_.match_cast(lhs, relax.TensorType(dims, info.dtype))
            return relax.Call(call.op, [named, *call.args[1:]], call.attrs, call.ty_args)

    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gvar] = _Namer(mod).visit_expr(func)
    return mod


__all__ = ["name_compound_rows"]
