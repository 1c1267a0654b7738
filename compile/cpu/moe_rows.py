"""Run each MoE expert's FFN only on the slots that hold a token (CPU builds).

The ONNX graph (define/moe.py) gathers every expert's slot list into one ``(E, M, D)`` block,
M = groups x slots per group, and runs the E FFNs on all of it. An empty slot holds token -1
(the gather reads the last token; its gate weight is 0, so it adds 0). With token choice in a
decoder the block is mostly empty: at batch 1 a group is one token, every expert keeps one slot
per group, and only the top-k of E slots are filled, so the FFNs did E/k times the useful work
(gpt-moe-tc small at E=32: 34 ms, 4.5x its E=4 latency).

After import this pass finds the expert chain
``add(matmul(act(add(matmul(gather_nd(X, where(i < 0, i + n, i)), W1), b1)), W2), b2)`` with
stacked ``(E, K, N)`` weights and ``(E, 1, N)`` biases, and rewrites it into a ragged grouped
FFN, the way MLC-LLM runs sparse MoE (rows sorted by expert, one GEMM over all of them). A gated
expert (SwiGLU: Mixtral, Qwen2-MoE) has ``act(h[..., :F]) * h[..., F:]`` in place of ``act(h)``,
h from one ``(E, K, 2F)`` weight, with act a named activation or silu written ``x * sigmoid(x)``:

1. ``moe_expert_counts``: filled slots per expert, and the row tiles they need
   (``sum_e ceil(count_e / 8)``), which becomes the block's symbolic size;
2. ``moe_pack_rows``: the filled slots' tokens, expert by expert, each expert's rows starting
   on an 8-row tile of their own, each tile's expert and filled rows, and each slot's row;
3. ``moe_grouped_matmul`` twice (weights re-laid as contiguous 32-column panels at build
   time), with the activation between them as an ordinary fused kernel;
4. ``moe_combine_rows``: the combine matmul that follows (``Experts.dispatch``) read straight
   from the grouped rows, one row update per nonzero gate weight. Where the expert outputs go
   anywhere else, ``moe_unpack_rows`` puts them back in the ``(E, M, D)`` slot layout instead,
   zeros in the empty slots.

The FFNs thus do (filled slots + under 8 per expert) rows instead of E x M: at batch 1 a
decoder's top-2 token choice fills 2 of every E slots. Expert choice fills every slot of a full
group, so there it saves nothing and costs the packing copy.

ONNX Runtime runs the graph as exported: its ops have no data-dependent row count that a matmul
could follow, so it keeps the padded block (README "Sparse expert dispatch").
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

_ACTIVATIONS = ("relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.relu", "relax.nn.silu")
# Rows per grouped-GEMM tile: 8 x 32 fp32 accumulators, 16 of AVX-512's 32 registers. Eight, not
# the dense schedule's 7 (matmul.py): a small batch gives an expert ~8 rows (bert-moe 1x128 at
# E = 32 takes k = 8 tokens per expert), which 7-row tiles ran as 14 rows and two weight passes.
TILE_ROWS = 8
SMALL_TILE_ROWS = 4  # a tile with this many filled rows or fewer runs a 4-row body
COLS = 32  # columns per tile: two 16-lane vectors
LANES = 16


def expert_counts_kernel():
    """PrimFunc: idx (E, M) int64 (-1 = empty) -> counts (E,) filled slots per expert, first (E,)
    each expert's first row tile (sum_{e' < e} ceil(count_e' / TILE_ROWS)), sizes (2,) = the grouped
    block's row tiles, max(1, all of them), and its rows (TILE_ROWS per tile). The build reads both
    as plain shape variables: a row count written ``tiles * 8`` made the activation between the
    two GEMMs a kernel that takes the tile count as an extra scalar, and FuseTIR rejected the
    fused group at static shapes (``forgeline tune`` on an MoE model)."""
    from tvm.script import tirx as T

    @T.prim_func(private=True, s_tir=True)
    def moe_expert_counts(var_idx: T.handle, var_counts: T.handle, var_first: T.handle, var_tiles: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        e, m = T.int64(), T.int64()
        idx = T.match_buffer(var_idx, (e, m), "int64")
        counts = T.match_buffer(var_counts, (e,), "int64")
        first = T.match_buffer(var_first, (e,), "int64")
        tiles = T.match_buffer(var_tiles, (2,), "int64")
        with T.sblock("root"):
            tiles[0] = T.int64(0)
            for expert in range(e):
                first[expert] = tiles[0]
                counts[expert] = T.int64(0)
                for j in range(m):
                    if idx[expert, j] >= T.int64(0):
                        counts[expert] = counts[expert] + T.int64(1)
                tiles[0] = tiles[0] + (counts[expert] + T.int64(TILE_ROWS - 1)) // T.int64(TILE_ROWS)
            tiles[0] = T.max(tiles[0], T.int64(1))  # never an empty block
            tiles[1] = tiles[0] * T.int64(TILE_ROWS)

    return moe_expert_counts


def pack_rows_kernel():
    """PrimFunc: x (N, D), idx (E, M), counts (E,), first (E,) -> rows (R, D), tiles (R / TILE_ROWS, 2)
    each row tile's expert and filled rows, slot_row (E, M): the row of ``rows`` that holds each
    slot's token, -1 for an empty slot.

    Expert e's filled slots, in slot order, fill whole tiles from its first tile on; the rest of
    its last tile is zeros.
    """
    from tvm.script import tirx as T

    @T.prim_func(private=True, s_tir=True)
    def moe_pack_rows(var_x: T.handle, var_idx: T.handle, var_counts: T.handle, var_first: T.handle,
                      var_rows: T.handle, var_tiles: T.handle, var_slot_row: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        n, d, e, m, r, nt = T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
        x = T.match_buffer(var_x, (n, d), "float32")
        idx = T.match_buffer(var_idx, (e, m), "int64")
        counts = T.match_buffer(var_counts, (e,), "int64")
        first = T.match_buffer(var_first, (e,), "int64")
        rows = T.match_buffer(var_rows, (r, d), "float32")
        tiles = T.match_buffer(var_tiles, (nt, 2), "int64")
        slot_row = T.match_buffer(var_slot_row, (e, m), "int64")
        with T.sblock("root"):
            filled = T.sblock_alloc_buffer((e,), "int64")
            for i in T.parallel(r):  # zeros in every padding row (and in the one tile of an empty block)
                for c in range(d):
                    rows[i, c] = T.float32(0)
            for t in range(nt):
                tiles[t, 0] = T.int64(0)
                tiles[t, 1] = T.int64(0)
            for expert in T.parallel(e):
                for t in range(nt):
                    if t >= first[expert] and t * T.int64(TILE_ROWS) < first[expert] * T.int64(TILE_ROWS) + counts[expert]:
                        tiles[t, 0] = expert
                        tiles[t, 1] = T.min(T.int64(TILE_ROWS),
                                            (first[expert] - t) * T.int64(TILE_ROWS) + counts[expert])
                filled[expert] = T.int64(0)
                for j in range(m):
                    slot_row[expert, j] = T.int64(-1)
                    if idx[expert, j] >= T.int64(0):
                        slot_row[expert, j] = first[expert] * T.int64(TILE_ROWS) + filled[expert]
                        for c in range(d):
                            rows[first[expert] * T.int64(TILE_ROWS) + filled[expert], c] = x[idx[expert, j], c]
                        filled[expert] = filled[expert] + T.int64(1)

    return moe_pack_rows


def unpack_rows_kernel():
    """PrimFunc: y (R, D), slot_row (E, M) -> out (E, M, D): each filled slot's row of y, zeros in
    the empty slots. Used where the expert outputs do not go straight into the combine matmul."""
    from tvm.script import tirx as T

    @T.prim_func(private=True, s_tir=True)
    def moe_unpack_rows(var_y: T.handle, var_slot_row: T.handle, var_out: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        r, d, e, m = T.int64(), T.int64(), T.int64(), T.int64()
        y = T.match_buffer(var_y, (r, d), "float32")
        slot_row = T.match_buffer(var_slot_row, (e, m), "int64")
        out = T.match_buffer(var_out, (e, m, d), "float32")
        with T.sblock("root"):
            for slot in T.parallel(e * m):
                row: T.let[T.int64] = slot_row[slot // m, slot % m]
                for c in range(d):
                    out[slot // m, slot % m, c] = T.if_then_else(row >= T.int64(0), y[T.max(row, T.int64(0)), c],
                                                                 T.float32(0))

    return moe_unpack_rows


def combine_rows_kernel(d_dim: int):
    """PrimFunc: y (R, D), slot_row (E, M), combine (G, n, E*s) -> out (G, n, D), M = G*s.

    ``Experts.dispatch``'s combine, ``out[g] = combine[g] @ Y_g`` with Y_g (E*s, D) group g's slot
    outputs (row e*s + r = slot g*s + r of expert e), read straight from the grouped rows: only a
    slot with a nonzero weight that holds a token adds anything (the others add exactly 0 in the
    exported matmul), so nothing is re-laid out and each token does ~picks row updates, not E*s.
    One task per token, in parallel.
    """
    from tvm.script import tirx as T

    vectors = d_dim // LANES

    @T.prim_func(private=True, s_tir=True)
    def moe_combine_rows(var_y: T.handle, var_slot_row: T.handle, var_combine: T.handle, var_out: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        r, e, m, g, n, es = T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
        y = T.match_buffer(var_y, (r, d_dim), "float32")
        slot_row = T.match_buffer(var_slot_row, (e, m), "int64")
        combine = T.match_buffer(var_combine, (g, n, es), "float32")
        out = T.match_buffer(var_out, (g, n, d_dim), "float32")
        with T.sblock("root"):
            for task in T.parallel(g * n):
                grp: T.let[T.int64] = task // n
                tok: T.let[T.int64] = task % n
                slots: T.let[T.int64] = es // e
                for v in range(vectors):
                    out[grp, tok, T.Ramp(v * LANES, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
                for q in range(es):
                    if combine[grp, tok, q] != T.float32(0):
                        row: T.let[T.int64] = slot_row[q // slots, grp * slots + q % slots]
                        if row >= T.int64(0):
                            for v in range(vectors):
                                out[grp, tok, T.Ramp(v * LANES, 1, LANES)] = (
                                    out[grp, tok, T.Ramp(v * LANES, 1, LANES)]
                                    + T.Broadcast(combine[grp, tok, q], LANES) * y[row, T.Ramp(v * LANES, 1, LANES)])

    return moe_combine_rows


def grouped_matmul_kernel(k_dim: int, n_dim: int):
    """PrimFunc: a (R, K), w (E, N/32, K, 32) packed panels, b (E, 1, N), tiles (R/8, 2) each row
    tile's expert and filled rows -> c (R, N) = a @ w[expert of the row's tile] + b[that expert].

    One task per (row tile, 32-column panel), in parallel. A tile's 8 x 32 accumulators stay in
    registers while k runs, and its panel is contiguous. A tile with at most SMALL_TILE_ROWS filled
    rows (an expert's last, or a lightly loaded expert's only tile) runs a 4-row body: with many
    experts a small batch gives each one a few rows, and the multiply-adds on padding rows cost
    as much as the weight stream. Rows past a tile's filled ones hold no result in that case, and
    nothing reads them (``slot_row`` points at filled rows only).
    """
    from tvm.script import tirx as T

    blocks = n_dim // COLS

    @T.macro
    def tile(a, w, b, c, acc, task, t, panel, expert, rows):
        for i in T.unroll(rows):
            acc[task, i, T.Ramp(0, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
            acc[task, i, T.Ramp(LANES, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
        for kk in range(k_dim):
            lo: T.let[T.float32x16] = w[expert, panel, kk, T.Ramp(0, 1, LANES)]
            hi: T.let[T.float32x16] = w[expert, panel, kk, T.Ramp(LANES, 1, LANES)]
            for i in T.unroll(rows):
                lhs: T.let[T.float32x16] = T.Broadcast(a[t * TILE_ROWS + i, kk], LANES)
                acc[task, i, T.Ramp(0, 1, LANES)] = acc[task, i, T.Ramp(0, 1, LANES)] + lhs * lo
                acc[task, i, T.Ramp(LANES, 1, LANES)] = acc[task, i, T.Ramp(LANES, 1, LANES)] + lhs * hi
        for i in T.unroll(rows):
            c[t * TILE_ROWS + i, T.Ramp(panel * COLS, T.int64(1), LANES)] = (
                acc[task, i, T.Ramp(0, 1, LANES)] + b[expert, 0, T.Ramp(panel * COLS, T.int64(1), LANES)])
            c[t * TILE_ROWS + i, T.Ramp(panel * COLS + LANES, T.int64(1), LANES)] = (
                acc[task, i, T.Ramp(LANES, 1, LANES)] + b[expert, 0, T.Ramp(panel * COLS + LANES, T.int64(1), LANES)])

    @T.prim_func(private=True, s_tir=True)
    def moe_grouped_matmul(var_a: T.handle, var_w: T.handle, var_b: T.handle, var_tiles: T.handle, var_c: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        r, e, nt = T.int64(), T.int64(), T.int64()
        a = T.match_buffer(var_a, (r, k_dim), "float32")
        w = T.match_buffer(var_w, (e, blocks, k_dim, COLS), "float32")
        b = T.match_buffer(var_b, (e, 1, n_dim), "float32")
        tiles = T.match_buffer(var_tiles, (nt, 2), "int64")
        c = T.match_buffer(var_c, (r, n_dim), "float32")
        with T.sblock("root"):
            acc = T.sblock_alloc_buffer((nt * blocks, TILE_ROWS, COLS), "float32")
            for task in T.parallel(nt * blocks):
                t: T.let[T.int64] = task // blocks
                panel: T.let[T.int64] = task % blocks
                expert: T.let[T.int64] = tiles[t, 0]
                if tiles[t, 1] <= T.int64(SMALL_TILE_ROWS):
                    tile(a, w, b, c, acc, task, t, panel, expert, SMALL_TILE_ROWS)
                else:
                    tile(a, w, b, c, acc, task, t, panel, expert, TILE_ROWS)

    return moe_grouped_matmul


def packed_panels(weight):
    """(E, K, N) constant -> (E, N/32, K, 32) constant: each 32-column panel contiguous."""
    from tvm import relax

    w = weight.value.numpy()  # (E, K, N)
    E, K, N = w.shape
    return relax.const(w.reshape(E, K, N // COLS, COLS).transpose(0, 2, 1, 3).copy())  # (E, N/32, K, 32)


def compact_expert_rows(mod, experts=None):
    """``mod`` with every MoE expert chain (module doc) running on its filled slots only.

    ``experts`` (a cpu.bf16.DenseLowering whose kernel takes (K, N) and whose weight operands
    come from the stacked (E, K, N) weight) replaces the fp32 grouped GEMM by a reduced
    precision's, with the same arguments after the weight (int8_moe.py).
    """
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
            rewriter = _ExpertRows(mod, kernel, experts)
            builder.update_func(gvar, rewriter.visit_expr(func))
            count += rewriter.count
    if count:
        logger.info("MoE experts run on their filled slots only: %d expert chain(s).", count)
    return relax.transform.DeadCodeElimination()(builder.get()) if count else mod


def _is_op(expr, name: str) -> bool:
    from tvm import ir, relax

    return isinstance(expr, relax.Call) and isinstance(expr.op, ir.Op) and expr.op.name == name


def const_ints(values) -> list[int] | None:
    """The ints of a Relax tuple of constants (a strided_slice's axes, begins, ...), None if any is not."""
    out = []
    for x in values:
        v = getattr(x, "value", x)  # PrimValue -> IntImm
        v = getattr(v, "value", v)  # IntImm -> int
        if not isinstance(v, int):
            return None
        out.append(v)
    return out


def _panels_fit(weight, bias) -> bool:
    """A static (E, K, N) weight with N in whole 32-column panels and an (E, 1, N) bias: what
    ``grouped_matmul_kernel`` takes."""
    from tvm import tirx

    dims = weight.ty.shape.values
    if not (all(isinstance(v, tirx.IntImm) for v in dims) and int(dims[2]) % COLS == 0):
        return False
    bias_dims = getattr(getattr(bias.ty, "shape", None), "values", None)
    return bias_dims is not None and len(bias_dims) == 3 and all(
        isinstance(v, tirx.IntImm) and int(v) == want for v, want in zip(bias_dims, (int(dims[0]), 1, int(dims[2]))))


def _stacked_weight(expr) -> bool:
    import tvm

    return isinstance(expr, tvm.ir.expr.Constant) and getattr(expr.ty, "ndim", 0) == 3


def _mutator():
    from tvm import relax

    @relax.expr_functor.mutator
    class ExpertRows(relax.PyExprMutator):
        def __init__(self, module, kernel, experts):
            super().__init__(module)
            self.kernel = kernel
            self.experts = experts
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
            tail = self._activation_tail(self._bound(h2.args[0]))
            if tail is None:
                return None
            a1, act = tail
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
            if raw.ty.ndim != 3 or rows.args[0].ty.ndim != 2 or call.ty.dtype != "float32":
                return None
            if not all(_panels_fit(w, b) for w, b in ((h1.args[1], a1.args[1]), (h2.args[1], call.args[1]))):
                return None
            return dict(x=rows.args[0], raw=raw, w1=h1.args[1], b1=a1.args[1], act=act,
                        w2=h2.args[1], b2=call.args[1])

        def _activation_tail(self, node):
            """(a1, how to redo the activation on the grouped rows) for act(a1) or a gated
            act(a1[..., :F]) * a1[..., F:]; None for anything else."""
            if node is not None and any(_is_op(node, name) for name in _ACTIVATIONS):
                return self._bound(node.args[0]), lambda h: relax.Call(node.op, [h], node.attrs, node.ty_args)
            if not _is_op(node, "relax.multiply"):
                return None
            gate, up = self._bound(node.args[0]), self._bound(node.args[1])
            half = self._half(up, second=True)
            if half is None:
                return None
            a1, width = half
            if any(_is_op(gate, name) for name in _ACTIVATIONS) and self._half(self._bound(gate.args[0])) == (a1, width):
                op, attrs = gate.op, gate.attrs
                act = lambda x: relax.Call(op, [x], attrs)  # noqa: E731
            elif _is_op(gate, "relax.multiply") and self._is_silu(gate, a1, width):
                act = lambda x: relax.op.multiply(x, relax.op.sigmoid(x))  # noqa: E731
            else:
                return None

            def redo(h):  # h (R, 2F) grouped rows
                first = self.builder_.emit(relax.op.strided_slice(h, [1], [0], [width]))  # (R, F)
                second = self.builder_.emit(relax.op.strided_slice(h, [1], [width], [2 * width]))  # (R, F)
                return relax.op.multiply(self.builder_.emit(act(first)), second)
            return a1, redo

        def _is_silu(self, gate, a1, width) -> bool:
            """gate = s * sigmoid(s) for s the first half of a1 (silu as the exporter writes it)."""
            x, sig = gate.args
            sig_call = self._bound(sig)
            return (_is_op(sig_call, "relax.sigmoid") and sig_call.args[0].same_as(x)
                    and self._half(self._bound(x)) == (a1, width))

        def _half(self, node, second: bool = False):
            """(a1, F) when node is a1[..., :F] (or a1[..., F:] with ``second``) of a 2F-wide a1."""
            if not (_is_op(node, "relax.strided_slice") and len(node.args) >= 4):
                return None
            axes, begins, ends = (const_ints(a) for a in node.args[1:4])
            strides = const_ints(node.args[4]) if len(node.args) > 4 else [1]
            a1 = self._bound(node.args[0])
            if axes != [2] or strides != [1] or a1 is None or a1.ty.ndim != 3:
                return None
            full = int(a1.ty.shape.values[2])
            begin, end = begins[0], ends[0]
            if second:
                return (a1, begin) if 2 * begin == full and end >= full else None
            return (a1, end) if begin == 0 and 2 * end == full else None

        def visit_call_(self, call):
            call = super().visit_call_(call)
            unpacked = self._combined_slots(call)
            if unpacked is not None:  # combine matmul over rewritten experts' slots (visited later)
                y, slot_row = unpacked
                d_dim = int(call.ty.shape.values[2])
                kernel = self.kernel(f"moe_combine_rows_{d_dim}", lambda: combine_rows_kernel(d_dim))
                return relax.call_tir(kernel, [y, slot_row, call.args[0]], out_ty=call.ty)
            parts = self._chain(call)
            if parts is None:
                return call
            self.count += 1
            return self._rewrite(call, parts)

        def _combined_slots(self, call):
            """(y, slot_row) when ``call`` is ``Experts.dispatch``'s combine,
            ``matmul(combine (G, n, E*s), reshape(permute_dims(reshape(unpack(y, slot_row)), [1, 0, 2, 3])))``."""
            if not (_is_op(call, "relax.matmul") and call.ty.dtype == "float32" and call.args[0].ty.ndim == 3):
                return None
            by_group = self._bound(call.args[1])  # (G, E*s, D)
            if not (_is_op(by_group, "relax.reshape") and by_group.ty.ndim == 3):
                return None
            swapped = self._bound(by_group.args[0])  # (G, E, s, D)
            if not (_is_op(swapped, "relax.permute_dims") and [int(a) for a in swapped.attrs.axes] == [1, 0, 2, 3]):
                return None
            split = self._bound(swapped.args[0])  # (E, G, s, D)
            unpack = self._bound(split.args[0]) if _is_op(split, "relax.reshape") else None
            if not (_is_op(unpack, "relax.call_tir") and unpack.args[0].name_hint == "moe_unpack_rows"):
                return None
            y, slot_row = unpack.args[1].fields
            return y, slot_row

        def _rewrite(self, call, p):
            from tvm import tirx

            emit = self.builder_.emit
            e, m, _ = p["raw"].ty.shape.values
            d = p["x"].ty.shape.values[1]
            idx = emit(relax.op.reshape(p["raw"], [e, m]))  # (E, M) token per slot, -1 = empty
            counted = emit(relax.call_tir(
                self.kernel("moe_expert_counts", expert_counts_kernel), [idx],
                out_ty=[relax.TensorType([e], "int64"), relax.TensorType([e], "int64"), relax.TensorType([2], "int64")]))
            counts, first = emit(relax.TupleGetItem(counted, 0)), emit(relax.TupleGetItem(counted, 1))
            shape = emit(relax.op.tensor_to_shape(relax.TupleGetItem(counted, 2)))
            tiles = tirx.Var(f"moe_tiles{self.count}", "int64")
            block_rows = tirx.Var(f"moe_rows{self.count}", "int64")  # = tiles * TILE_ROWS
            self.builder_.match_cast(shape, relax.ShapeType([tiles, block_rows]))
            packed = emit(relax.call_tir(
                self.kernel("moe_pack_rows", pack_rows_kernel), [p["x"], idx, counts, first],
                out_ty=[relax.TensorType([block_rows, d], "float32"), relax.TensorType([tiles, 2], "int64"),
                        relax.TensorType([e, m], "int64")]))
            rows, tile_info = emit(relax.TupleGetItem(packed, 0)), emit(relax.TupleGetItem(packed, 1))
            slot_row = emit(relax.TupleGetItem(packed, 2))  # (E, M) row of each slot's token, -1 = empty
            h = emit(self._grouped(rows, p["w1"], p["b1"], tile_info))  # (R, F), or (R, 2F) gated
            h = emit(p["act"](h))  # (R, F)
            y = emit(self._grouped(h, p["w2"], p["b2"], tile_info))  # (R, D)
            # Back to the (E, M, D) slot layout; a combine matmul that reads it becomes moe_combine_rows.
            return relax.call_tir(self.kernel("moe_unpack_rows", unpack_rows_kernel), [y, slot_row], out_ty=call.ty)

        def _grouped(self, rows, weight, bias, tile_info):
            _, k_dim, n_dim = (int(v) for v in weight.ty.shape.values)
            out = relax.TensorType([rows.ty.shape.values[0], n_dim], "float32")
            if self.experts is not None:
                func, name = self.experts.kernel(k_dim, n_dim)
                operands = [relax.const(v) for v in self.experts.weight_operands(weight.value.numpy())]
                return relax.call_tir(self.kernel(name, lambda: func), [rows, *operands, bias, tile_info], out_ty=out)
            kernel = self.kernel(f"moe_grouped_matmul_{k_dim}x{n_dim}", lambda: grouped_matmul_kernel(k_dim, n_dim))
            return relax.call_tir(kernel, [rows, packed_panels(weight), bias, tile_info], out_ty=out)

    return ExpertRows


def _ExpertRows(module, kernel, experts=None):  # noqa: N802 - builds the mutator class on first use (TVM import)
    return _mutator()(module, kernel, experts)


__all__ = ["combine_rows_kernel", "const_ints", "compact_expert_rows", "expert_counts_kernel", "grouped_matmul_kernel", "pack_rows_kernel",
           "packed_panels", "unpack_rows_kernel"]
