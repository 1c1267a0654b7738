"""fp32 builds: a tied embedding reads its rows from the LM head's packed panels.

The fp32 GEMM schedule packs a constant weight into ``(N/cols, K, cols)`` column panels
(matmul.py), folded at build time (weights.py). For a tied head, ``logits = h @ E^T``, that packed
copy holds every row of ``E``, so keeping ``E`` itself for the embedding lookup would store the
table twice (GPT-2 base: 154 MB each). Two steps, because the packed copy exists only once the
packing has been folded:

1. ``mark_tied_lookups`` (before legalization): each ``take(E, ids, axis=0)`` whose constant
   table is the transpose of a matmul's constant weight becomes a call of a plain row gather
   (``tied_rows_DxV``, marked ``TIED_ROWS_ATTR``) on ``E``.
2. ``read_packed_rows`` (after the packing is folded): each marked gather whose table equals the
   rows of a packed panel constant of the module reads those panels instead
   (packed_rows.py), and ``E`` leaves the module.

The values are the table's own (the panels are a copy, not a rounding), so fp32 outputs do not
move. A build whose head is not packed (OpenBLAS offload) keeps the plain gather on ``E``.
"""

from __future__ import annotations

import logging

import numpy as np

from .packed_rows import rows_kernel

logger = logging.getLogger(__name__)

TIED_ROWS_ATTR = "forgeline.tied_rows"
TIE_CHUNK_ROWS = 4096  # table rows compared at a time: a few MB of temporaries, not the table's size


def equal_transposed(weight: np.ndarray, rows: np.ndarray) -> bool:
    """``weight (D, V) == rows (V, D).T``, compared in chunks of rows."""
    for start in range(0, rows.shape[0], TIE_CHUNK_ROWS):
        stop = start + TIE_CHUNK_ROWS
        if not np.array_equal(weight[:, start:stop].T, rows[start:stop]):
            return False
    return True


def row_lookup_pattern():
    """``take(table, ids)`` with a constant table: (pattern, table, ids) for ``rewrite_call``."""
    from tvm.relax.dpl import is_const, is_op, wildcard

    table, ids = is_const(), wildcard()
    return is_op("relax.take")(table, ids), table, ids


def is_row_lookup(call, table, ids) -> bool:
    """Whether a matched ``take`` is an embedding lookup this module can read from a head: rows
    (axis 0) of a 2-D fp32 table, by int64 ids of known rank."""
    info = table.ty
    return (int(call.attrs.axis) == 0 and info.dtype == "float32" and info.ndim == 2
            and getattr(ids.ty, "dtype", None) == "int64" and ids.ty.shape is not None)


def call_rows(reader, operands: list, ids, k: int):
    """``reader(*operands, ids flattened)`` reshaped to ``(*ids.shape, k)``: the lookup's result."""
    from tvm import relax, tirx

    lead = list(ids.ty.shape.values)
    count = lead[0]
    for dim in lead[1:]:
        count = count * dim
    flat = relax.op.reshape(ids, relax.ShapeExpr([count]))
    out = relax.call_tir(reader, [*operands, flat], relax.TensorType([count, k], "float32"))
    return relax.op.reshape(out, relax.ShapeExpr([*lead, tirx.IntImm("int64", k)]))


def _table_element(ops, t, c):
    (table,) = ops
    return table[t, c]


def _panel_element(cols: int, lead: int):
    """Element (row t, column c) of ``E`` in panels ``(1.., V/cols, D, cols)`` (``lead`` unit axes)."""
    from tvm.script import tirx as T

    def element(ops, t, c):
        (panels,) = ops
        return panels[(*([T.int64(0)] * lead), t // cols, c, t % cols)]

    return element


def _matmul_weights(mod) -> list:
    """The constant right operands of every Relax ``matmul`` in ``mod``."""
    import tvm
    from tvm import relax

    found = []

    def visit(node) -> None:
        if (isinstance(node, relax.Call) and getattr(node.op, "name", "") == "relax.matmul"
                and isinstance(node.args[1], tvm.ir.expr.Constant)):
            found.append(node.args[1])

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return found


def mark_tied_lookups(mod):
    """Step 1: tied ``take``s become marked row gathers on their table (see the module doc)."""
    from tvm import relax
    from tvm.relax.dpl import rewrite_call

    weights = _matmul_weights(mod)
    if not weights:
        return mod
    builder = relax.BlockBuilder(mod.clone())
    gathers: dict = {}
    pattern, table, ids = row_lookup_pattern()

    def tied(const) -> bool:
        rows = np.from_dlpack(const.value)
        return any(tuple(w.value.shape) == rows.shape[::-1] and equal_transposed(np.from_dlpack(w.value), rows)
                   for w in weights if str(w.value.dtype) == "float32")

    def lookup(call, matches):
        const, index = matches[table], matches[ids]
        if not (is_row_lookup(call, const, index) and tied(const)):
            return call
        n, k = (int(d) for d in const.value.shape)
        if (k, n) not in gathers:
            func = rows_kernel([((n, k), "float32")], k, n, _table_element).with_attr(TIED_ROWS_ATTR, True)
            gathers[(k, n)] = builder.add_func(func, f"tied_rows_{k}x{n}")
        return call_rows(gathers[(k, n)], [const], index, k)

    rewritten = {gv: rewrite_call(pattern, lookup, f) for gv, f in mod.functions.items()
                 if isinstance(f, relax.Function)}
    out = builder.get() if gathers else mod
    weights.clear()  # as in read_packed_rows: nothing of this frame may keep the weights alive
    builder = None  # noqa: F841
    if not gathers:
        return mod
    for gvar, func in rewritten.items():
        out[gvar] = func
    return out


def _panels_hold(panels: np.ndarray, rows: np.ndarray) -> bool:
    """Whether ``panels (1.., V/cols, D, cols)`` hold ``rows (V, D)`` as column panels."""
    v, d = rows.shape
    if any(dim != 1 for dim in panels.shape[:-3]):  # a stack of weights (experts): not one head
        return False
    flat = panels.reshape(panels.shape[-3:])  # (V/cols, D, cols)
    cols = flat.shape[-1]
    if flat.shape[1] != d or flat.shape[0] * cols < v or flat.shape[0] * cols - v >= cols:
        return False
    step = max(1, TIE_CHUNK_ROWS // cols)
    for start in range(0, flat.shape[0], step):
        chunk = flat[start:start + step].transpose(0, 2, 1).reshape(-1, d)  # (panels * cols, D)
        want = rows[start * cols:start * cols + chunk.shape[0]]
        if not np.array_equal(chunk[:want.shape[0]], want):
            return False
    return True


def read_packed_rows(mod):
    """Step 2: marked gathers read the head's packed panels (see the module doc)."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    call_tir = tvm.ir.Op.get("relax.call_tir")
    marked = {gv for gv, f in mod.functions.items()
              if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and f.attrs.get(TIED_ROWS_ATTR)}
    if not marked:
        return mod
    panels: list = []

    def visit(node) -> None:
        if isinstance(node, relax.Call) and node.op.same_as(call_tir) and node.args[0] not in marked:
            panels.extend(a for a in node.args[1].fields if isinstance(a, tvm.ir.expr.Constant)
                          and str(a.value.dtype) == "float32" and len(a.value.shape) >= 3)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    builder = relax.BlockBuilder(mod)
    readers: dict = {}
    switched = []

    def packed_copy(table):
        rows = np.from_dlpack(table.value)
        for const in panels:
            if _panels_hold(np.from_dlpack(const.value), rows):
                return const
        return None

    @mutator
    class _Switch(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (call.op.same_as(call_tir) and call.args[0] in marked):
                return call
            table, ids = call.args[1].fields
            found = packed_copy(table)
            if found is None:
                return call
            n, k = (int(d) for d in table.value.shape)
            shape = tuple(int(d) for d in found.value.shape)
            key = (k, n, shape)
            if key not in readers:
                element = _panel_element(shape[-1], len(shape) - 3)
                readers[key] = builder.add_func(rows_kernel([(shape, "float32")], k, n, element),
                                                f"packed_rows_{k}x{n}")
            switched.append(key)
            return relax.call_tir(readers[key], [found, ids], call.ty_args[0])

    functions = {gv: _Switch().visit_expr(f) for gv, f in mod.functions.items() if isinstance(f, relax.Function)}
    out = builder.get() if switched else mod
    # TVM keeps the mutator class, and with it this frame's cells: drop what holds weights (the
    # builder holds the whole module), or every build's weights would outlive it.
    panels.clear()
    builder = None  # noqa: F841
    if not switched:
        return mod
    for gvar, func in functions.items():
        out[gvar] = func
    logger.info("%d embedding lookup(s) read the tied head's packed fp32 panels.", len(switched))
    return relax.transform.DeadCodeElimination()(out)


__all__ = ["TIED_ROWS_ATTR", "call_rows", "equal_transposed", "is_row_lookup", "mark_tied_lookups",
           "read_packed_rows", "row_lookup_pattern"]
