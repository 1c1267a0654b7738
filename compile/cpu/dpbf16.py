"""A bf16 GEMM on AVX512-BF16's ``vdpbf16ps``, written in TIR: ``C = A @ W (+ bias) (+ R)``.

For CPUs with AVX512-BF16 and no AMX (AMD Zen 4/5, Intel Cooper Lake). The kernel computes
``C[m, N] = bf16(A)[m, K] . bf16(W)[K, N]`` with fp32 accumulation, for a symbolic row count
``m`` (batch x sequence) and a constant weight packed once at build time:

- **The instruction.** ``vdpbf16ps zmm_acc, zmm_a, zmm_b`` adds, in each of 16 fp32 lanes, the two
  products of a bf16 pair: ``acc[j] += a[2j+1] b[2j+1]; acc[j] += a[2j] b[2j]`` (Intel's order;
  each bf16 product is exact in fp32). TVM 0.27 has no intrinsic for it and LLVM 22 types it on
  ``<32 x bfloat>``, which TVM's legalized bf16 (``uint16``) never produces, so the kernel calls a
  small LLVM IR function (``DPBF16_IR``, linked with ``pragma_import_llvm`` and inlined) that
  bitcasts ``<16 x i32>`` pairs to ``<32 x bfloat>``.
- **Weights** (``pack_weight``) are bf16 pairs in uint32 panels ``(N/32, K/2, 32)``: word
  ``[p, kk, j]`` holds ``W[2kk, 32p + j]`` in its low half and ``W[2kk + 1, 32p + j]`` in its high
  half, so one k-pair step of a panel is two contiguous zmm loads. K and N are zero-padded to a
  whole pair and a whole panel; padding adds nothing to the sums.
- **Activations** are rounded to bf16 (round to nearest even) per call in a parallel pre-pass
  into the same pair layout ``(m, K/2)`` uint32; the kernel broadcasts one word (a row's k-pair)
  to all 16 lanes.
- **Register tile.** ``TILE_ROWS`` rows x 32 columns: 24 zmm accumulators, two loads of B and
  one broadcast of A per row and k-pair. The accumulators are two stack buffers of under 1 KiB
  each (TVM's ``kMaxStackAlloca``), indexed by constants once unrolled, so LLVM keeps them in
  registers. Rows past the last whole tile take 4-row and 1-row tiles: no row padding, and a
  batch-1 decode step (m = 1) costs one row, not twelve.
- **Parallel tasks** are (column panel, row tile) pairs, panel-major: each thread streams its own
  column panels of the weight once while A (already halved to bf16) is re-read from cache, and a
  batch-1 GEMV still spreads its columns over every core.
- **Epilogue.** Bias, then GELU or the residual, are applied as the tile is written back from
  registers (the fp32 GEMM schedule's epilogues; GELU as epilogues.py's polynomials); the last
  panel of an N that is not a multiple of 32 is written lane by lane.

``emulate=True`` builds the same kernel with ``vdpbf16ps`` written as TIR vector arithmetic in the
instruction's order (odd product first, then even, each an fp32 add), so it checks the packing,
addressing and numerics on any x86-64 host; only the hardware's flushing of denormals differs.
"""

from __future__ import annotations

import numpy as np

from .amx import bf16_bits, padded

LANES = 16  # fp32 lanes of a zmm register
PANEL_COLS = 2 * LANES  # output columns of one register tile (two accumulators per row)
# 12 rows x 2 accumulators + 2 vectors of B + 1 broadcast of A = 27 of AVX-512's 32 registers.
TILE_ROWS = 12
EDGE_ROWS = 4  # the tile for the rows past the last whole 12-row tile, before single rows
DPBF16_CPU_FEATURES = ("avx512f", "avx512_bf16")  # /proc/cpuinfo spelling
DPBF16_LLVM_ATTRS = ("+avx512f", "+avx512bw", "+avx512bf16")
DPBF16_FUNC = "forgeline_dpbf16ps"
# linkonce_odr: every kernel of a module links its own copy of the text, and LLVM keeps one.
DPBF16_IR = f"""
define linkonce_odr <16 x float> @{DPBF16_FUNC}(<16 x float> %acc, <16 x i32> %a, <16 x i32> %b) #0 {{
  %av = bitcast <16 x i32> %a to <32 x bfloat>
  %bv = bitcast <16 x i32> %b to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %acc, <32 x bfloat> %av, <32 x bfloat> %bv)
  ret <16 x float> %r
}}
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)
attributes #0 = {{ alwaysinline nounwind readnone }}
"""


def pack_weight(weight: np.ndarray) -> np.ndarray:
    """A (K, N) fp32 weight as the kernel's bf16 pair panels ``(N/32, K/2, 32)`` (uint32).

    ``packed[p, kk, j] = bf16(W[2kk, 32p + j]) | bf16(W[2kk + 1, 32p + j]) << 16``, zero past K, N.
    """
    k, n = weight.shape
    k_pad, n_pad = padded(k, 2), padded(n, PANEL_COLS)
    full = np.zeros((k_pad, n_pad), np.uint32)
    full[:k, :n] = bf16_bits(weight)
    pairs = full[0::2] | (full[1::2] << 16)  # (K/2, N)
    # (K/2, N/32, 32) -> (N/32, K/2, 32)
    return np.ascontiguousarray(pairs.reshape(k_pad // 2, n_pad // PANEL_COLS, PANEL_COLS).transpose(1, 0, 2))


def packed_shape(k: int, n: int) -> tuple[int, int, int]:
    return (padded(n, PANEL_COLS) // PANEL_COLS, padded(k, 2) // 2, PANEL_COLS)


def _bf16_word(value):
    """fp32 -> its bf16 bits (round to nearest even) in the low half of a uint32."""
    from tvm.script import tirx as T

    bits = T.reinterpret("uint32", value)
    return (bits + T.uint32(0x7FFF) + ((bits >> T.uint32(16)) & T.uint32(1))) >> T.uint32(16)


def bf16_pair(A, row, kk, k: int):
    """Row ``row``'s k-pair ``kk`` of the fp32 buffer A (K = ``k`` columns) as one uint32 of two
    bf16 halves, the even k low: the activation word ``vdpbf16ps`` broadcasts."""
    from tvm.script import tirx as T

    if k % 2 == 0:
        return _bf16_word(A[row, 2 * kk]) | (_bf16_word(A[row, 2 * kk + 1]) << T.uint32(16))
    # odd K: the last pair's high half is zero (T.min keeps the untaken load in bounds)
    high = T.if_then_else(2 * kk + 1 < k, _bf16_word(A[row, T.min(2 * kk + 1, k - 1)]), T.uint32(0))
    return _bf16_word(A[row, 2 * kk]) | (high << T.uint32(16))


def tile_sums(rows: int, pairs: int, emulate: bool, amx_panels: bool = False):
    """Macro ``(acc0, acc1, Apk, W, row0, panel)``: the fp32 sums of a ``rows`` x 32 register tile,
    rows ``row0..`` of the bf16 pairs Apk against 32-column panel ``panel`` of W, over all
    ``pairs`` k-pairs, into ``acc0`` (columns 0-15) and ``acc1`` (16-31), rows * 16 floats each.
    With ``amx_panels`` W is the AMX kernel's packing seen as words ``(N/16, K/2, 16)``: columns
    0-15 of the panel are 16-column panel ``2 panel``, columns 16-31 panel ``2 panel + 1``."""
    from tvm.script import tirx as T

    dot = _emulated_dot if emulate else _native_dot

    def low(W, panel, kk):
        return W[2 * panel, kk, T.ramp(0, 1, LANES)] if amx_panels else W[panel, kk, T.ramp(0, 1, LANES)]

    def high(W, panel, kk):
        return W[2 * panel + 1, kk, T.ramp(0, 1, LANES)] if amx_panels else W[panel, kk, T.ramp(LANES, 1, LANES)]

    @T.macro
    def sums(acc0, acc1, Apk, W, row0, panel):
        for r in T.unroll(rows):
            acc0[T.ramp(r * LANES, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
            acc1[T.ramp(r * LANES, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
        for kk in range(pairs):
            for r in T.unroll(rows):
                acc0[T.ramp(r * LANES, 1, LANES)] = dot(
                    acc0[T.ramp(r * LANES, 1, LANES)], T.Broadcast(Apk[row0 + r, kk], LANES),
                    low(W, panel, kk))
                acc1[T.ramp(r * LANES, 1, LANES)] = dot(
                    acc1[T.ramp(r * LANES, 1, LANES)], T.Broadcast(Apk[row0 + r, kk], LANES),
                    high(W, panel, kk))

    return sums


def _native_dot(acc, a, b):
    from tvm.script import tirx as T

    return T.call_pure_extern("float32x16", DPBF16_FUNC, acc, a, b)


def _emulated_dot(acc, a, b):
    """``vdpbf16ps`` in TIR: the high (odd) products first, then the low (even) ones."""
    from tvm.script import tirx as T

    high_mask = T.Broadcast(T.uint32(0xFFFF0000), LANES)
    shift = T.Broadcast(T.uint32(16), LANES)

    def high(v):
        return T.reinterpret("float32x16", v & high_mask)

    def low(v):
        return T.reinterpret("float32x16", v << shift)

    return (acc + high(a) * high(b)) + low(a) * low(b)


def dpbf16_dense(k: int, n: int, *, residual: bool = False, gelu: str | None = None, emulate: bool = False,
                 amx_panels: bool = False):
    """The PrimFunc ``(A (m, k) f32, W packed, bias (n,) f32, [R (m, n) f32,] C (m, n) f32)``.

    ``m`` is symbolic. ``C = A @ W + bias (+ R)``, the argument order of amx.amx_dense, so the
    Relax rewrite (bf16.py) calls either kernel the same way. ``gelu`` ("erf" or "tanh", not with
    ``residual``) gives ``C = GELU(A @ W + bias)`` (dense_gelu.py fuses it).

    ``amx_panels``: W is packed for the AMX kernel (amx.pack_weight, ``(N/16, K/2, 16, 2)`` uint16).
    Its words are this kernel's pairs, even k in the low half, in 16-column panels, so the kernel
    reads them in place through a uint32 view: an AMX build's decode graphs (one row per
    sequence, where a 32-row tile block would be 31/32 padding) run here on the weights the
    build's other graphs use, stored once.
    """
    from tvm.script import tirx as T

    from . import amx
    from .epilogues import gelu as gelu_of

    if gelu is not None and residual:
        raise ValueError("a dense kernel fuses GELU or a residual, not both.")
    pairs = padded(k, 2) // 2
    panels = padded(n, PANEL_COLS) // PANEL_COLS
    w_shape, w_dtype = (amx.packed_shape(k, n), "uint16") if amx_panels else (packed_shape(k, n), "uint32")
    words = (w_shape[0], w_shape[1], w_shape[2])  # the view the tiles read: (panels, k-pairs, words)
    vec_chunks, vec_tail = divmod(pairs, LANES)

    def _epilogue(value, bias, res, row, col):  # resolved as the kernel is built
        value = value + bias[col]
        if gelu is not None:
            return gelu_of(value, gelu)
        return value + res[row, col] if residual else value

    def _pair(A, row, kk):
        return bf16_pair(A, row, kk, k)

    def tile(rows: int):
        sums = tile_sums(rows, pairs, emulate, amx_panels)

        @T.macro
        def _tile(Apk, W, Bias, R, C, row0, panel):
            acc0 = T.decl_buffer((rows * LANES,), "float32")  # columns 0-15 of the panel
            acc1 = T.decl_buffer((rows * LANES,), "float32")  # columns 16-31
            sums(acc0, acc1, Apk, W, row0, panel)
            if panel * PANEL_COLS + PANEL_COLS <= n:
                for r in T.unroll(rows):
                    for j in T.vectorized(LANES):
                        C[row0 + r, panel * PANEL_COLS + j] = _epilogue(
                            acc0[r * LANES + j], Bias, R, row0 + r, panel * PANEL_COLS + j)
                        C[row0 + r, panel * PANEL_COLS + LANES + j] = _epilogue(
                            acc1[r * LANES + j], Bias, R, row0 + r, panel * PANEL_COLS + LANES + j)
            else:  # the last, partial panel: only its real columns
                for r in T.unroll(rows):
                    for j in range(LANES):
                        if panel * PANEL_COLS + j < n:
                            C[row0 + r, panel * PANEL_COLS + j] = _epilogue(
                                acc0[r * LANES + j], Bias, R, row0 + r, panel * PANEL_COLS + j)
                        if panel * PANEL_COLS + LANES + j < n:
                            C[row0 + r, panel * PANEL_COLS + LANES + j] = _epilogue(
                                acc1[r * LANES + j], Bias, R, row0 + r, panel * PANEL_COLS + LANES + j)

        return _tile

    full_tile, edge_tile, row_tile = tile(TILE_ROWS), tile(EDGE_ROWS), tile(1)

    @T.macro
    def _row_tile(Apk, W, Bias, R, C, m, tile_index, panel):
        # No let-bound names in the task body: TVM gives each one a heap allocation per
        # parallel iteration.
        if tile_index * TILE_ROWS + TILE_ROWS <= m:
            full_tile(Apk, W, Bias, R, C, tile_index * TILE_ROWS, panel)
        else:  # the last rows: 4-row tiles, then single rows
            for q in range(TILE_ROWS // EDGE_ROWS):
                if tile_index * TILE_ROWS + q * EDGE_ROWS + EDGE_ROWS <= m:
                    edge_tile(Apk, W, Bias, R, C, tile_index * TILE_ROWS + q * EDGE_ROWS, panel)
            for r in range(EDGE_ROWS - 1):
                if tile_index * TILE_ROWS + (m - tile_index * TILE_ROWS) // EDGE_ROWS * EDGE_ROWS + r < m:
                    row_tile(Apk, W, Bias, R, C,
                             tile_index * TILE_ROWS + (m - tile_index * TILE_ROWS) // EDGE_ROWS * EDGE_ROWS + r,
                             panel)

    @T.macro
    def _body(A, W, Bias, R, C, m):
        Apk = T.decl_buffer((m, pairs), "uint32")  # A as bf16 pairs, rounded once per call
        for i in T.parallel(m):
            for chunk in range(vec_chunks):
                for kv in T.vectorized(LANES):
                    Apk[i, chunk * LANES + kv] = _pair(A, i, chunk * LANES + kv)
            for kv in range(vec_tail):
                Apk[i, vec_chunks * LANES + kv] = _pair(A, i, vec_chunks * LANES + kv)
        for task in T.parallel(panels * ((m + TILE_ROWS - 1) // TILE_ROWS)):
            _row_tile(Apk, W, Bias, R, C, m, task % ((m + TILE_ROWS - 1) // TILE_ROWS),
                      task // ((m + TILE_ROWS - 1) // TILE_ROWS))

    @T.prim_func(private=True)
    def dense(a: T.handle, w: T.handle, b: T.handle, c: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()
        A = T.match_buffer(a, (m, k), "float32")
        W = T.match_buffer(w, w_shape, w_dtype)
        Bias = T.match_buffer(b, (n,), "float32")
        C = T.match_buffer(c, (m, n), "float32")
        Wv = T.decl_buffer(words, "uint32", data=W.data)
        with T.attr(0, "pragma_import_llvm", DPBF16_IR):
            _body(A, Wv, Bias, C, C, m)  # R unused without a residual

    @T.prim_func(private=True)
    def dense_residual(a: T.handle, w: T.handle, b: T.handle, r: T.handle, c: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()
        A = T.match_buffer(a, (m, k), "float32")
        W = T.match_buffer(w, w_shape, w_dtype)
        Bias = T.match_buffer(b, (n,), "float32")
        R = T.match_buffer(r, (m, n), "float32")
        C = T.match_buffer(c, (m, n), "float32")
        Wv = T.decl_buffer(words, "uint32", data=W.data)
        with T.attr(0, "pragma_import_llvm", DPBF16_IR):
            _body(A, Wv, Bias, R, C, m)

    return dense_residual if residual else dense


__all__ = ["DPBF16_CPU_FEATURES", "DPBF16_IR", "DPBF16_LLVM_ATTRS", "bf16_pair", "dpbf16_dense",
           "pack_weight", "packed_shape", "tile_sums"]
