"""Self-attention's core as one kernel: ``softmax(Q K^T * scale + mask) V``, heads in place.

The importer gives each attention layer seven kernels after the Q/K/V GEMM: three slice +
transpose copies into head layout, ``Q K^T``, the scale and mask, softmax, ``P V`` and a
transpose back. At gpt-small 1x128 they took about a quarter of a bf16 call, more than the dense
layers around them, and each paid a parallel launch (~4.5 us on a 2-core VM). This kernel reads
Q, K and V where the GEMM wrote them, ``(batch, seq, heads, head_dim)`` with the three of them
side by side in one tensor, and writes the output in the layout the next dense layer reads:

- one parallel task per (batch, head): K's rows of the head are copied once, transposed, into a
  zero-padded ``(head_dim, keys rounded up to the key block)`` scratch;
- for each block of ``QUERY_ROWS`` queries: the scores against every key, ``QUERY_ROWS x key
  block`` accumulators at a time (the key block is two SIMD registers of the target: 8
  accumulator registers at AVX-512 and at AVX2), scaled and masked; softmax over the padded row
  (padding scores are -inf-like, so their weights are 0), the exp as softmax.py's; then ``P V``
  with up to two queries' outputs held in registers while the keys stream past.

All in fp32, in every precision: softmax stays fp32 anyway (docs/precision.md), and neither
operand of ``Q K^T`` or ``P V`` is a constant, so nothing could be packed at build time.

``fuse_attention`` rewrites the pattern the ONNX importer produces for multi-head attention
(``permute_dims`` into heads, ``matmul``, ``multiply`` or ``divide`` by a constant, an optional
additive mask, ``softmax``, ``matmul``, ``permute_dims`` back) when every shape checks; anything
else (grouped-query heads, a KV cache's concatenated keys, a mask that broadcasts along the keys)
keeps the separate kernels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .matmul import ACCUMULATOR_BYTES
from .moe_rows import const_ints
from .softmax import LANES, UNDERFLOW_TO_ZERO, vector_exp_macro

logger = logging.getLogger(__name__)

QUERY_ROWS = 4  # queries per score block: 4 x key_block accumulators
ACCUMULATORS = 8  # SIMD registers a register tile may take (AVX2 has 16 in all, AVX-512 32)
MASKED = -3.0e38  # a padding key's score: its weight underflows to exactly 0


@dataclass(frozen=True)
class AttentionShape:
    """What one fused attention kernel is specialized for; batch and lengths stay symbolic."""

    heads: int
    head_dim: int
    q_heads: int  # dim 2 of the tensor Q is read from (3 * heads when Q, K, V share one)
    k_heads: int
    v_heads: int
    q_first: int  # Q's first head within that tensor
    k_first: int
    v_first: int
    scale: float
    masked: bool  # an additive (b, h, q, k) mask, each of its first three dims 1 or full
    causal: bool = False  # the mask is a constant causal table: keys past a query block are skipped
    lanes: int = LANES  # fp32 lanes of the target's SIMD registers (16 AVX-512, 8 AVX2)

    @property
    def key_block(self) -> int:
        """Keys per score tile: two registers, and a whole number of the softmax's 16-lane vectors."""
        return max(2 * self.lanes, LANES)

    @property
    def pv_rows(self) -> int:
        """Queries whose ``P V`` rows stay in registers together: two where their accumulators fit
        ACCUMULATORS registers and under 1 KiB, else one."""
        fits = 2 * -(-self.head_dim // self.lanes) <= ACCUMULATORS and 2 * self.head_dim * 4 < ACCUMULATOR_BYTES
        return 2 if fits else 1


def attention_kernel(shape: AttentionShape):
    """The PrimFunc ``(Xq, Xk, Xv, [M,] O)``: ``O[b, i, h] = softmax_j(Q_i . K_j * scale + M) V_j``.

    ``Xq (B, Tq, q_heads, D)`` holds Q's heads from ``q_first`` on, and likewise K and V;
    ``M (MB, MH, MQ, Tk)`` broadcasts over any of its first three dims of size 1;
    ``O (B, Tq, heads, D)``. B, Tq, Tk, MB, MH, MQ are symbolic.
    """
    from tvm.script import tirx as T

    heads, dim = shape.heads, shape.head_dim
    rows, block, pv_rows = QUERY_ROWS, shape.key_block, shape.pv_rows
    lanes = LANES
    vector_exp = vector_exp_macro(lanes, UNDERFLOW_TO_ZERO)

    def padded_keys(tk):
        return (tk + block - 1) // block * block

    def key_end(q0, tk):
        """Keys the block of queries from ``q0`` computes, in whole key blocks: all of them, or
        with a causal mask those up to its last query (the rest have weight exactly 0)."""
        if shape.causal:
            return T.min(padded_keys(tk), (q0 + rows + block - 1) // block * block)
        return padded_keys(tk)

    def query(q, tq):  # a query row, clamped: the last block's extra rows are computed, not stored
        return T.min(q, tq - 1)

    def mask_value(M, mb, mh, mq, b, h, q, j):
        return M[T.min(b, mb - 1), T.min(h, mh - 1), T.min(q, mq - 1), j]

    @T.macro
    def transpose_keys(Xk, Kt, b, h, tk):
        for j in range(tk):
            for d in range(dim):
                Kt[d, j] = Xk[b, j, shape.k_first + h, d]
        for j in range(padded_keys(tk) - tk):
            for d in range(dim):
                Kt[d, tk + j] = T.float32(0)

    @T.macro
    def scores(Xq, Kt, S, b, h, q0, tq, tk):
        # S[r, :] = Q[q0 + r] . K^T * scale over whole key blocks (padding keys give 0)
        for jb in range(key_end(q0, tk) // block):
            acc = T.decl_buffer((rows, block), "float32")  # at most 512 B: registers
            for r in T.unroll(rows):
                for jj in T.vectorized(block):
                    acc[r, jj] = T.float32(0)
            for d in range(dim):
                for r in T.unroll(rows):
                    for jj in T.vectorized(block):
                        acc[r, jj] = acc[r, jj] + Xq[b, query(q0 + r, tq), shape.q_first + h, d] * Kt[d, jb * block + jj]
            for r in T.unroll(rows):
                for jj in T.vectorized(block):
                    S[r, jb * block + jj] = acc[r, jj] * T.float32(shape.scale)

    @T.macro
    def mask_scores(S, M, mb, mh, mq, b, h, q0, tq, tk, with_mask):
        for r in range(rows):
            if with_mask:
                for j in range(T.min(tk, key_end(q0, tk))):  # a plain loop: LLVM vectorizes it
                    S[r, j] = S[r, j] + mask_value(M, mb, mh, mq, b, h, query(q0 + r, tq), j)
            for j in range(key_end(q0, tk) - T.min(tk, key_end(q0, tk))):
                S[r, tk + j] = T.float32(MASKED)

    @T.macro
    def softmax_rows(S, E, top, total, q0, tk):
        # in place over each padded row: whole vectors only
        for r in range(rows):
            E[0, T.Ramp(0, 1, lanes)] = T.Broadcast(T.min_value("float32"), lanes)
            for jv in range(key_end(q0, tk) // lanes):
                E[0, T.Ramp(0, 1, lanes)] = T.max(E[0, T.Ramp(0, 1, lanes)], S[r, T.Ramp(jv * lanes, 1, lanes)])
            top[0] = T.min_value("float32")
            for lane in range(lanes):
                top[0] = T.max(top[0], E[0, lane])
            E[1, T.Ramp(0, 1, lanes)] = T.Broadcast(T.float32(0), lanes)
            for jv in range(key_end(q0, tk) // lanes):
                vector_exp(S, r, jv * lanes, S[r, T.Ramp(jv * lanes, 1, lanes)] - T.Broadcast(top[0], lanes))
                E[1, T.Ramp(0, 1, lanes)] = E[1, T.Ramp(0, 1, lanes)] + S[r, T.Ramp(jv * lanes, 1, lanes)]
            total[0] = T.float32(0)
            for lane in range(lanes):
                total[0] = total[0] + E[1, lane]
            top[0] = T.float32(1) / total[0]  # the row's scale from here on
            for jv in range(key_end(q0, tk) // lanes):
                S[r, T.Ramp(jv * lanes, 1, lanes)] = S[r, T.Ramp(jv * lanes, 1, lanes)] * T.Broadcast(top[0], lanes)

    @T.macro
    def weighted_values(Xv, S, O, b, h, q0, tq, tk):
        for rp in range(rows // pv_rows):
            acc = T.decl_buffer((pv_rows, dim), "float32")  # under 1 KiB: registers
            for p in T.unroll(pv_rows):
                for d in T.vectorized(dim):
                    acc[p, d] = T.float32(0)
            for j in range(T.min(tk, key_end(q0, tk))):
                for p in T.unroll(pv_rows):
                    for d in T.vectorized(dim):
                        acc[p, d] = acc[p, d] + S[rp * pv_rows + p, j] * Xv[b, j, shape.v_first + h, d]
            for p in range(pv_rows):
                if q0 + rp * pv_rows + p < tq:
                    for d in T.vectorized(dim):
                        O[b, q0 + rp * pv_rows + p, h, d] = acc[p, d]

    @T.macro
    def body(Xq, Xk, Xv, M, O, batch, tq, tk, mb, mh, mq, with_mask):
        for task in T.parallel(batch * heads):  # (b, h) = (task // heads, task % heads)
            Kt = T.decl_buffer((dim, padded_keys(tk)), "float32")
            S = T.decl_buffer((rows, padded_keys(tk)), "float32")
            E = T.decl_buffer((2, lanes), "float32")
            top = T.decl_buffer((1,), "float32")
            total = T.decl_buffer((1,), "float32")
            transpose_keys(Xk, Kt, task // heads, task % heads, tk)
            for qb in range((tq + rows - 1) // rows):
                scores(Xq, Kt, S, task // heads, task % heads, qb * rows, tq, tk)
                mask_scores(S, M, mb, mh, mq, task // heads, task % heads, qb * rows, tq, tk, with_mask)
                softmax_rows(S, E, top, total, qb * rows, tk)
                weighted_values(Xv, S, O, task // heads, task % heads, qb * rows, tq, tk)

    @T.prim_func(private=True)
    def attention(xq: T.handle, xk: T.handle, xv: T.handle, o: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        batch, tq, tk = T.int64(), T.int64(), T.int64()
        Xq = T.match_buffer(xq, (batch, tq, shape.q_heads, dim), "float32")
        Xk = T.match_buffer(xk, (batch, tk, shape.k_heads, dim), "float32")
        Xv = T.match_buffer(xv, (batch, tk, shape.v_heads, dim), "float32")
        O = T.match_buffer(o, (batch, tq, heads, dim), "float32")
        body(Xq, Xk, Xv, O, O, batch, tq, tk, 1, 1, 1, False)  # the mask argument is unused

    @T.prim_func(private=True)
    def masked_attention(xq: T.handle, xk: T.handle, xv: T.handle, m: T.handle, o: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        batch, tq, tk = T.int64(), T.int64(), T.int64()
        mb, mh, mq = T.int64(), T.int64(), T.int64()
        Xq = T.match_buffer(xq, (batch, tq, shape.q_heads, dim), "float32")
        Xk = T.match_buffer(xk, (batch, tk, shape.k_heads, dim), "float32")
        Xv = T.match_buffer(xv, (batch, tk, shape.v_heads, dim), "float32")
        M = T.match_buffer(m, (mb, mh, mq, tk), "float32")
        O = T.match_buffer(o, (batch, tq, heads, dim), "float32")
        body(Xq, Xk, Xv, M, O, batch, tq, tk, mb, mh, mq, True)

    return masked_attention if shape.masked else attention


def _axes(call) -> list[int] | None:
    axes = call.attrs.axes
    return None if axes is None else [int(a) for a in axes]


def _static(dim) -> int | None:
    from tvm import tirx

    return int(dim) if isinstance(dim, tirx.IntImm) else None


def _scalar(const) -> float | None:
    import numpy as np

    value = np.from_dlpack(const.value)
    return float(value.reshape(-1)[0]) if value.size == 1 and value.dtype == "float32" else None


def _heads_source(var, var2val, heads: int, dim: int):
    """``(tensor, first head)`` that ``var`` (B, T, heads, D) reads: the tensor its unit-stride
    slice along the head axis takes from (Q, K and V of one GEMM share it), else itself."""
    from tvm import relax

    value = var2val.get(var, var) if isinstance(var, relax.Var) else var  # matched through its binding or not
    if not isinstance(value, relax.Call) or value.op.name != "relax.strided_slice":
        return var, 0
    source, axes, begin = value.args[0], const_ints(value.args[1]), const_ints(value.args[2])
    strides = const_ints(value.args[4]) if len(value.args) > 4 else [1]
    shape = getattr(source.ty, "shape", None)
    if (axes == [2] and strides == [1] and begin is not None and begin[0] >= 0 and shape is not None
            and len(shape) == 4 and _static(shape[2]) is not None and _static(shape[3]) == dim):
        return source, begin[0]
    return var, 0


def _mask_ok(mask, scores_shape) -> bool:
    """An fp32 additive mask whose last dim is the keys' and whose other dims are 1 or full."""
    import tvm_ffi
    from tvm import relax

    info = mask.ty
    if not isinstance(info, relax.TensorType) or info.dtype != "float32" or info.shape is None:
        return False
    shape = list(info.shape)
    if not 1 <= len(shape) <= 4:
        return False
    aligned = list(scores_shape)[4 - len(shape):]  # (batch, heads, queries, keys), right-aligned
    if not tvm_ffi.structural_equal(shape[-1], aligned[-1]):
        return False
    return all(_static(d) == 1 or tvm_ffi.structural_equal(d, full) for d, full in zip(shape[:-1], aligned[:-1]))


CAUSAL_FLOOR = -1.0e8  # a causal table's masked entries are at most this (NEG_INF is -1e9)


def _is_causal_table(mask, var2val) -> bool:
    """Whether ``mask`` is ``C[:Tq, :Tk]`` of a constant square table that is 0 on and below the
    diagonal and at most CAUSAL_FLOOR above it (GPT's causal bias): row i then gives every key
    past i a weight of exactly 0, and key 0 a live score."""
    import numpy as np
    import tvm
    from tvm import relax

    expr = mask
    for _ in range(4):  # a slice per axis, or one for both
        value = var2val.get(expr, expr) if isinstance(expr, relax.Var) else expr
        if isinstance(value, tvm.ir.GenericConst):
            table = np.from_dlpack(value.value)
            if table.ndim != 2 or table.shape[0] != table.shape[1] or table.dtype != np.float32:
                return False
            below = np.tril(np.ones(table.shape, bool))
            return bool((table[below] == 0).all() and (table[~below] <= CAUSAL_FLOOR).all())
        if not isinstance(value, relax.Call) or value.op.name != "relax.strided_slice":
            return False
        begin = const_ints(value.args[2])
        strides = const_ints(value.args[4]) if len(value.args) > 4 else [1]
        if begin is None or any(begin) or strides is None or any(s != 1 for s in strides):
            return False
        expr = value.args[0]
    return False


def fuse_attention(mod, lanes: int = LANES):
    """``mod`` with each multi-head attention core of its Relax functions as one ``call_tir`` of
    ``attention_kernel`` (register tiles for ``lanes``-wide fp32 SIMD); attention that does not
    fit the pattern keeps its kernels."""
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    q4, k4, v4, mask, scale = wildcard(), wildcard(), wildcard(), wildcard(), is_const()
    q, kt, v = is_op("relax.permute_dims")(q4), is_op("relax.permute_dims")(k4), is_op("relax.permute_dims")(v4)
    s = is_op("relax.matmul")(q, kt)
    scaled = is_op("relax.multiply")(s, scale) | is_op("relax.divide")(s, scale)
    masked = is_op("relax.add")(scaled, mask)
    p = is_op("relax.nn.softmax")(masked | scaled)
    pattern = is_op("relax.permute_dims")(is_op("relax.matmul")(p, v))
    builder = relax.BlockBuilder(mod)
    kernels: dict[AttentionShape, relax.GlobalVar] = {}
    fused = [0]

    def rewrite(call, matches, var2val):
        found = _match(call, matches, var2val, (q, kt, v, scaled, p, q4, k4, v4, mask, scale, masked), lanes)
        if found is None:
            return call
        shape, args = found
        if shape not in kernels:
            kernels[shape] = builder.add_func(attention_kernel(shape), "fused_attention")
        fused[0] += 1
        return relax.call_tir(kernels[shape], args, out_ty=call.ty)

    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            var2val = relax.analysis.get_var2val(func)
            builder.update_func(gvar, rewrite_call(pattern, lambda c, m: rewrite(c, m, var2val), func))
    if fused[0]:
        logger.info("Attention: %d layer(s) on the fused kernel.", fused[0])
    return builder.get()


def _match(call, matches, var2val, parts, lanes: int):
    """``(AttentionShape, call_tir args)`` for a matched attention, or None where a check fails."""
    from tvm import relax

    q, kt, v, scaled, p, q4, k4, v4, mask, scale, masked = parts
    out = call.ty
    if (_axes(call) != [0, 2, 1, 3] or _axes(matches[q]) != [0, 2, 1, 3]
            or _axes(matches[kt]) != [0, 2, 3, 1] or _axes(matches[v]) != [0, 2, 1, 3]):
        return None
    if int(matches[p].attrs.axis) not in (-1, 3):
        return None
    tensors = [matches[x].ty for x in (q4, k4, v4)]
    if any(not isinstance(t, relax.TensorType) or t.dtype != "float32" or t.ndim != 4 or t.shape is None
           for t in (*tensors, out)):
        return None
    heads, dim = _static(tensors[0].shape[2]), _static(tensors[0].shape[3])
    if heads is None or dim is None or any(_static(t.shape[2]) != heads or _static(t.shape[3]) != dim
                                            for t in tensors[1:]):
        return None  # grouped-query attention repeats its K/V heads: not this kernel
    factor = _scalar(matches[scale])
    if factor is None or factor == 0.0:
        return None
    if matches[scaled].op.name == "relax.divide":
        factor = 1.0 / factor
    has_mask = masked in matches
    q_shape, k_shape = tensors[0].shape, tensors[1].shape
    if has_mask and not _mask_ok(matches[mask], [q_shape[0], heads, q_shape[1], k_shape[1]]):
        return None
    sources = [_heads_source(matches[x], var2val, heads, dim) for x in (q4, k4, v4)]
    shape = AttentionShape(heads=heads, head_dim=dim, q_heads=_static(sources[0][0].ty.shape[2]),
                           k_heads=_static(sources[1][0].ty.shape[2]), v_heads=_static(sources[2][0].ty.shape[2]),
                           q_first=sources[0][1], k_first=sources[1][1], v_first=sources[2][1],
                           scale=factor, masked=has_mask,
                           causal=has_mask and _is_causal_table(matches[mask], var2val), lanes=lanes)
    args = [source for source, _ in sources]
    if has_mask:
        m = matches[mask]
        rank = m.ty.ndim
        args.append(m if rank == 4 else relax.op.reshape(m, [1] * (4 - rank) + list(m.ty.shape)))
    return shape, args


__all__ = ["AttentionShape", "QUERY_ROWS", "attention_kernel", "fuse_attention"]
