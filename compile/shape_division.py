"""Write the importer's truncating shape divisions as floor divisions, right after import (every target).

TVM's ONNX importer turns the graph's own shape arithmetic (a ``Div`` of shape values) into
``T.Div``, truncating division, while the shapes it infers itself use ``//``, floor division. The
two agree on sizes, which are never negative, but TVM's simplifier does not prove
``T.Div(seq + 15, 16) == (seq + 15) // 16``. A reshape between the two spellings then stays a copy
kernel with a chain of divisions per element, where it would otherwise be a free view:
MoE's combine reshape ``(G, n, E, s) -> (G, n, E * s)`` took 0.15 ms a layer in bert-moe at
E = 32, 1 x 128 (znver5, 2 threads).
"""

from __future__ import annotations


def _floored(expr):
    """``expr`` with every truncating division by a positive constant written as a floor division.

    Only valid for non-negative dividends, which holds for the shape expressions this is used on.
    """
    from tvm import tirx

    if isinstance(expr, tirx.Div) and isinstance(expr.b, tirx.IntImm) and int(expr.b) > 0:
        return tirx.floordiv(_floored(expr.a), expr.b)
    for kind in (tirx.Add, tirx.Sub, tirx.Mul, tirx.FloorDiv, tirx.FloorMod, tirx.Div, tirx.Min, tirx.Max):
        if isinstance(expr, kind):
            return kind(_floored(expr.a), _floored(expr.b))
    return expr


def floor_shape_divisions(mod):
    """``mod`` with the target shape of every reshape free of truncating divisions (module doc)."""
    from tvm import ir, relax

    @relax.expr_functor.mutator
    class _Floorer(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (isinstance(call.op, ir.Op) and call.op.name == "relax.reshape"
                    and isinstance(call.args[1], relax.ShapeExpr)):
                return call
            dims = list(call.args[1].values)
            floored = [_floored(d) for d in dims]
            if all(a.same_as(b) for a, b in zip(dims, floored)):
                return call
            return relax.op.reshape(call.args[0], relax.ShapeExpr(floored))

    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gvar] = _Floorer(mod).visit_expr(func)
    return mod


__all__ = ["floor_shape_divisions"]
