"""A hand-written TIR softmax for rows of symbolic length (attention over a dynamic sequence).

Legalized softmax over a symbolic last axis cannot be vectorized by a schedule: splitting the
axis into SIMD vectors leaves a predicated tail (LLVM scalarizes it), ``loop_partition``
rejects a dynamic extent, and every stage's row buffer becomes a heap allocation per row. So
gpt-small's (1, 4, 128, 128) attention softmax took 0.12 ms in the untuned build against 0.03
in a static bucket. This kernel walks each row in whole ``LANES``-wide vectors plus a scalar
tail of ``n % LANES`` elements, so neither part carries a predicate: a vector max, a vector
``exp`` (range reduction to ``2^k * e^r`` with ``|r| <= ln2 / 2``, degree-6 Taylor in ``r``,
relative error ~2e-7) with the row sum in a vector, then one scaling pass. 0.039 ms on the
same softmax (znver4, one thread).

``lanes_softmax`` rewrites ``R.nn.softmax`` over the last axis of a 4-D fp32 tensor (attention)
into a ``call_tir`` of this kernel. Static rows (tuned buckets) take it too, though the row rules
or MetaSchedule would vectorize the legalized softmax: TOPI's ``fast_exp`` returns subnormals
just above its -88.4 clamp, and subnormal attention weights slowed the PV matmul on Intel 60x
(``UNDERFLOW_TO_ZERO``).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

LANES = 16  # one AVX-512 register of fp32; LLVM splits it into halves or quarters elsewhere
# e^v for v = x - max below this is written as exactly 0 (e^-64 = 1.6e-28: far below fp32's
# resolution next to the row's largest term, which is 1). A causal mask puts -1e9-ish scores in
# half of every attention row; their e^-87 (the clamp) divided by the row sum is subnormal, and
# the PV matmul then ran on subnormal operands: on Intel each such FMA takes a microcode assist,
# and gpt-small's PV matmuls took 23.6 of 38.9 ms (one thread, Xeon; AMD Zen has no such penalty).
UNDERFLOW_TO_ZERO = -64.0


def vector_exp_macro(lanes: int = LANES, underflow: float = UNDERFLOW_TO_ZERO):
    """The macro ``vector_exp(out, row, col, src)``: ``out[row, col : col + lanes] = e^src`` for a
    ``lanes``-wide fp32 vector ``src``, and exactly 0 where ``src`` is below ``underflow``."""
    from tvm.script import tirx as T

    @T.macro
    def vector_exp(out, row, col, src):
        # e^v = 2^k * e^r with k = round(v / ln2), r = v - k ln2 (ln2 in two parts, so r is
        # exact to fp32); e^r by its Taylor series to r^6 / 6!; 2^k built in the exponent bits.
        v: T.let[T.float32x16] = T.max(src, T.Broadcast(T.float32(-87.0), lanes))
        k: T.let[T.float32x16] = T.floor(v * T.Broadcast(T.float32(1.4426950408889634), lanes)
                                + T.Broadcast(T.float32(0.5), lanes))
        r: T.let[T.float32x16] = (v - k * T.Broadcast(T.float32(0.693145751953125), lanes)
                         - k * T.Broadcast(T.float32(1.428606765330187e-06), lanes))
        p6: T.let[T.float32x16] = T.Broadcast(T.float32(1.0 / 720), lanes)
        p5: T.let[T.float32x16] = p6 * r + T.Broadcast(T.float32(1.0 / 120), lanes)
        p4: T.let[T.float32x16] = p5 * r + T.Broadcast(T.float32(1.0 / 24), lanes)
        p3: T.let[T.float32x16] = p4 * r + T.Broadcast(T.float32(1.0 / 6), lanes)
        p2: T.let[T.float32x16] = p3 * r + T.Broadcast(T.float32(0.5), lanes)
        p1: T.let[T.float32x16] = p2 * r + T.Broadcast(T.float32(1.0), lanes)
        p0: T.let[T.float32x16] = p1 * r + T.Broadcast(T.float32(1.0), lanes)
        two_k: T.let[T.float32x16] = T.reinterpret(f"float32x{lanes}", T.shift_left(
            T.Cast(f"int32x{lanes}", k) + T.Broadcast(T.int32(127), lanes),
            T.Broadcast(T.int32(23), lanes)))
        out[row, T.Ramp(col, 1, lanes)] = T.Select(src < T.Broadcast(T.float32(underflow), lanes),
                                                   T.Broadcast(T.float32(0.0), lanes), p0 * two_k)

    return vector_exp


def softmax_rows_kernel():
    """The PrimFunc ``y = softmax(x, axis=-1)`` for ``x, y: (d0, d1, d2, n)``, all symbolic."""
    from tvm.script import tirx as T

    lanes = LANES
    underflow = UNDERFLOW_TO_ZERO
    vector_exp = vector_exp_macro(lanes, underflow)

    @T.prim_func(private=True, s_tir=True)
    def softmax_rows(var_x: T.handle, var_y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        d0, d1, d2, n = T.int64(), T.int64(), T.int64(), T.int64()
        x = T.match_buffer(var_x, (d0, d1, d2, n), "float32")
        y = T.match_buffer(var_y, (d0, d1, d2, n), "float32")
        with T.sblock("root"):  # Relax's passes expect a root block (HasReshapePattern)
            # Per-row scratch: TVM compacts each to the row's 16 (or 1) floats, on the stack.
            acc = T.sblock_alloc_buffer((d0 * d1 * d2, lanes), "float32")
            e = T.sblock_alloc_buffer((d0 * d1 * d2, lanes), "float32")
            red = T.sblock_alloc_buffer((d0 * d1 * d2,), "float32")
            for row in T.parallel(d0 * d1 * d2):
                i0: T.let[T.int64] = row // (d1 * d2)
                i1: T.let[T.int64] = row % (d1 * d2) // d2
                i2: T.let[T.int64] = row % d2
                tail: T.let[T.int64] = n // lanes * lanes  # where the scalar tail starts
                acc[row, T.Ramp(0, 1, lanes)] = T.Broadcast(T.min_value("float32"), lanes)
                for j in range(n // lanes):
                    acc[row, T.Ramp(0, 1, lanes)] = T.max(acc[row, T.Ramp(0, 1, lanes)],
                                                     x[i0, i1, i2, T.Ramp(j * lanes, T.int64(1), lanes)])
                red[row] = T.min_value("float32")
                for lane in range(lanes):
                    red[row] = T.max(red[row], acc[row, lane])
                for j in range(n % lanes):
                    red[row] = T.max(red[row], x[i0, i1, i2, tail + j])
                top: T.let[T.float32] = red[row]
                acc[row, T.Ramp(0, 1, lanes)] = T.Broadcast(T.float32(0.0), lanes)
                for j in range(n // lanes):
                    vector_exp(e, row, 0, x[i0, i1, i2, T.Ramp(j * lanes, T.int64(1), lanes)]
                               - T.Broadcast(top, lanes))
                    y[i0, i1, i2, T.Ramp(j * lanes, T.int64(1), lanes)] = e[row, T.Ramp(0, 1, lanes)]
                    acc[row, T.Ramp(0, 1, lanes)] = acc[row, T.Ramp(0, 1, lanes)] + e[row, T.Ramp(0, 1, lanes)]
                red[row] = T.float32(0.0)
                for lane in range(lanes):
                    red[row] = red[row] + acc[row, lane]
                for j in range(n % lanes):
                    y[i0, i1, i2, tail + j] = T.Select(x[i0, i1, i2, tail + j] - top < T.float32(underflow),
                                                       T.float32(0.0), T.exp(x[i0, i1, i2, tail + j] - top))
                    red[row] = red[row] + y[i0, i1, i2, tail + j]
                inv: T.let[T.float32] = T.float32(1.0) / red[row]
                for j in range(n // lanes):
                    y[i0, i1, i2, T.Ramp(j * lanes, T.int64(1), lanes)] = (
                        y[i0, i1, i2, T.Ramp(j * lanes, T.int64(1), lanes)] * T.Broadcast(inv, lanes))
                for j in range(n % lanes):
                    y[i0, i1, i2, tail + j] = y[i0, i1, i2, tail + j] * inv

    return softmax_rows


def _last_axis_softmax(call) -> bool:
    sinfo = call.args[0].ty
    shape = getattr(sinfo, "shape", None)
    if getattr(sinfo, "dtype", None) != "float32" or getattr(sinfo, "ndim", -1) != 4 or shape is None:
        return False
    return int(call.attrs.axis) in (-1, 3)


def lanes_softmax(mod):
    """``mod`` with every 4-D fp32 softmax over its last axis on ``softmax_rows_kernel``."""
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    pattern = is_op("relax.nn.softmax")(wildcard())
    found = [0]
    builder = relax.BlockBuilder(mod)
    kernel = []

    def rewrite(call, _matches):
        if not _last_axis_softmax(call):
            return call
        if not kernel:
            kernel.append(builder.add_func(softmax_rows_kernel(), "softmax_rows"))
        found[0] += 1
        return relax.call_tir(kernel[0], [call.args[0]], out_ty=call.args[0].ty)

    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            builder.update_func(gvar, rewrite_call(pattern, rewrite, func))
    if found[0]:
        logger.info("Attention softmax: %d calls on the lane kernel.", found[0])
    return builder.get()


__all__ = ["LANES", "UNDERFLOW_TO_ZERO", "lanes_softmax", "softmax_rows_kernel", "vector_exp_macro"]
