"""Run each MoE expert's FFN only on the slots that hold a token (CPU builds).

The ONNX graph (define/moe.py) gathers every expert's slot list into one ``(E, M, D)`` block,
M = groups x slots per group, and runs the E FFNs on all of it. An empty slot holds token -1
(the gather reads the last token; its gate weight is 0, so it adds 0). With token choice in a
decoder the block is mostly empty: at batch 1 a group is one token, every expert keeps one slot
per group, and only the top-k of E slots are filled, so the FFNs did E/k times the useful work
(gpt-moe-tc small at E=32: 34 ms, 4.5x its E=4 latency).

After import this pass finds the expert chain
``add(matmul(act(add(matmul(gather_nd(X, where(i < 0, i + n, i)), W1), b1)), W2), b2)`` with
stacked ``(E, K, N)`` weights and rewrites it to

1. ``moe_slot_positions``: each filled slot's position among its expert's filled slots, and
   Mc = the most filled slots any expert has (at least 1), as a shape;
2. ``moe_compact_rows``: the filled slots' tokens packed into an ``(E, Mc, D)`` block (zeros past
   an expert's count);
3. the same matmuls, bias and activation on that block (the GEMM schedule takes a symbolic M);
4. ``moe_expand_rows``: back to the ``(E, M, D)`` slot layout, zeros in the empty slots, which the
   combine matmul that follows weights by 0.

The work is E x Mc rows instead of E x M. Mc is the busiest expert's load, so a skewed router
still pays for its busiest expert on every expert; a ragged grouped GEMM (rows sorted by expert
with an indptr) would pay for the filled slots only. Expert choice fills every slot of a full
group, so there Mc = M and the pass costs the two copies.

ONNX Runtime runs the graph as exported: its ops have no data-dependent row count that a matmul
could follow, so it keeps the padded block (README "Sparse expert dispatch").
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

_ACTIVATIONS = ("relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.relu", "relax.nn.silu")


def slot_positions_kernel():
    """PrimFunc: idx (E, M) int64 (-1 = empty) -> pos (E, M) (-1 = empty), mc (1,) = max(1, max_e count_e)."""
    from tvm.script import tirx as T

    @T.prim_func(private=True, s_tir=True)
    def moe_slot_positions(var_idx: T.handle, var_pos: T.handle, var_mc: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        e, m = T.int64(), T.int64()
        idx = T.match_buffer(var_idx, (e, m), "int64")
        pos = T.match_buffer(var_pos, (e, m), "int64")
        mc = T.match_buffer(var_mc, (1,), "int64")
        with T.sblock("root"):
            count = T.sblock_alloc_buffer((1,), "int64")
            mc[0] = T.int64(1)  # never an empty block: a (E, 0, D) matmul is legal but pointless
            for expert in range(e):
                count[0] = T.int64(0)
                for j in range(m):
                    if idx[expert, j] >= T.int64(0):
                        pos[expert, j] = count[0]
                        count[0] = count[0] + T.int64(1)
                    else:
                        pos[expert, j] = T.int64(-1)
                mc[0] = T.max(mc[0], count[0])

    return moe_slot_positions


def compact_rows_kernel(dtype: str):
    """PrimFunc: x (N, D), idx (E, M), pos (E, M) -> rows (E, Mc, D), rows[e, pos[e, j]] = x[idx[e, j]]."""
    from tvm.script import tirx as T

    @T.prim_func(private=True, s_tir=True)
    def moe_compact_rows(var_x: T.handle, var_idx: T.handle, var_pos: T.handle, var_rows: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        n, d, e, m, mc = T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
        x = T.match_buffer(var_x, (n, d), dtype)
        idx = T.match_buffer(var_idx, (e, m), "int64")
        pos = T.match_buffer(var_pos, (e, m), "int64")
        rows = T.match_buffer(var_rows, (e, mc, d), dtype)
        with T.sblock("root"):
            for expert in T.parallel(e):
                for p in range(mc):  # rows past the count feed the GEMM: zeros, not stale memory
                    for c in range(d):
                        rows[expert, p, c] = T.Cast(dtype, 0)
                for j in range(m):
                    if pos[expert, j] >= T.int64(0):
                        for c in range(d):
                            rows[expert, pos[expert, j], c] = x[idx[expert, j], c]

    return moe_compact_rows


def expand_rows_kernel(dtype: str):
    """PrimFunc: y (E, Mc, D), pos (E, M) -> out (E, M, D), out[e, j] = y[e, pos[e, j]], 0 where empty."""
    from tvm.script import tirx as T

    @T.prim_func(private=True, s_tir=True)
    def moe_expand_rows(var_y: T.handle, var_pos: T.handle, var_out: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        e, mc, d, m = T.int64(), T.int64(), T.int64(), T.int64()
        y = T.match_buffer(var_y, (e, mc, d), dtype)
        pos = T.match_buffer(var_pos, (e, m), "int64")
        out = T.match_buffer(var_out, (e, m, d), dtype)
        with T.sblock("root"):
            for expert in T.parallel(e):
                for j in range(m):
                    if pos[expert, j] >= T.int64(0):
                        for c in range(d):
                            out[expert, j, c] = y[expert, pos[expert, j], c]
                    else:
                        for c in range(d):
                            out[expert, j, c] = T.Cast(dtype, 0)

    return moe_expand_rows


def compact_expert_rows(mod):
    """``mod`` with every MoE expert chain (module doc) running on its filled slots only."""
    from tvm import relax

    builder = relax.BlockBuilder(mod)
    kernels: dict[str, object] = {}

    def kernel(name: str, make):
        if name not in kernels:
            kernels[name] = builder.add_func(make(), name)
        return kernels[name]

    count = 0
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            rewriter = _ExpertRows(mod, kernel)
            builder.update_func(gvar, rewriter.visit_expr(func))
            count += rewriter.count
    if count:
        logger.info("MoE experts run on their filled slots only: %d expert chain(s).", count)
    return relax.transform.DeadCodeElimination()(builder.get()) if count else mod


def _is_op(expr, name: str) -> bool:
    from tvm import ir, relax

    return isinstance(expr, relax.Call) and isinstance(expr.op, ir.Op) and expr.op.name == name


def _stacked_weight(expr) -> bool:
    import tvm

    return isinstance(expr, tvm.ir.expr.Constant) and getattr(expr.ty, "ndim", 0) == 3


def _mutator():
    from tvm import relax

    @relax.expr_functor.mutator
    class ExpertRows(relax.PyExprMutator):
        def __init__(self, module, kernel):
            super().__init__(module)
            self.kernel = kernel
            self.count = 0

        def _bound(self, expr):
            """The call a var is bound to in the function being rebuilt (None if none)."""
            if isinstance(expr, relax.Var):
                value = self.lookup_binding(expr)
                return value if isinstance(value, relax.Call) else None
            return expr if isinstance(expr, relax.Call) else None

        def _chain(self, call):
            """The expert chain ending in ``call`` (the second bias add), as its parts, or None."""
            if not _is_op(call, "relax.add"):
                return None
            h2 = self._bound(call.args[0])
            if not (_is_op(h2, "relax.matmul") and _stacked_weight(h2.args[1])):
                return None
            act = self._bound(h2.args[0])
            if act is None or not any(_is_op(act, name) for name in _ACTIVATIONS):
                return None
            a1 = self._bound(act.args[0])
            h1 = self._bound(a1.args[0]) if _is_op(a1, "relax.add") else None
            if not (_is_op(h1, "relax.matmul") and _stacked_weight(h1.args[1])):
                return None
            rows = self._bound(h1.args[0])
            if not _is_op(rows, "relax.gather_nd"):
                return None
            norm = self._bound(rows.args[1])  # where(raw < 0, raw + n, raw): ONNX's negative-index wrap
            if not (_is_op(norm, "relax.where") and _is_op(self._bound(norm.args[0]), "relax.less")):
                return None
            raw = norm.args[2]
            info = raw.ty
            if info.ndim != 3 or rows.args[0].ty.ndim != 2:
                return None
            return dict(x=rows.args[0], raw=raw, w1=h1.args[1], b1=a1.args[1], act=act,
                        w2=h2.args[1], b2=call.args[1])

        def visit_call_(self, call):
            call = super().visit_call_(call)
            parts = self._chain(call)
            if parts is None:
                return call
            self.count += 1
            return self._rewrite(call, parts)

        def _rewrite(self, call, p):
            from tvm import tirx

            emit = self.builder_.emit
            dtype = call.ty.dtype
            e, m, _ = p["raw"].ty.shape.values
            d = p["x"].ty.shape.values[1]
            idx = emit(relax.op.reshape(p["raw"], [e, m]))  # (E, M) token per slot, -1 = empty
            positions = emit(relax.call_tir(
                self.kernel("moe_slot_positions", slot_positions_kernel), [idx],
                out_ty=[relax.TensorType([e, m], "int64"), relax.TensorType([1], "int64")]))
            pos = emit(relax.TupleGetItem(positions, 0))
            shape = emit(relax.op.tensor_to_shape(relax.TupleGetItem(positions, 1)))
            mc = tirx.Var(f"moe_rows{self.count}", "int64")
            self.builder_.match_cast(shape, relax.ShapeType([mc]))
            rows = emit(relax.call_tir(
                self.kernel(f"moe_compact_rows_{dtype}", lambda: compact_rows_kernel(dtype)),
                [p["x"], idx, pos], out_ty=relax.TensorType([e, mc, d], dtype)))
            h = emit(relax.op.add(emit(relax.op.matmul(rows, p["w1"])), p["b1"]))  # (E, Mc, F)
            h = emit(relax.Call(p["act"].op, [h], p["act"].attrs, p["act"].ty_args))
            y = emit(relax.op.add(emit(relax.op.matmul(h, p["w2"])), p["b2"]))  # (E, Mc, D)
            return relax.call_tir(self.kernel(f"moe_expand_rows_{dtype}", lambda: expand_rows_kernel(dtype)),
                                  [y, pos], out_ty=call.ty)

    return ExpertRows


def _ExpertRows(module, kernel):  # noqa: N802 - builds the mutator class on first use (TVM import)
    return _mutator()(module, kernel)


__all__ = ["compact_expert_rows", "compact_rows_kernel", "expand_rows_kernel", "slot_positions_kernel"]
