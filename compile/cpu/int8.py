"""A dynamically quantized int8 GEMM in TIR: ``C = dequant(u8(A) . s8(W)) + bias (+ R)``.

The numerics are those of ONNX Runtime's ``quantize_dynamic`` with per-channel weights:

- **Weights** (``quantize_weight``, at build time): symmetric per output column,
  ``s_w[n] = max_k |W[k, n]| / weight_max`` and ``Wq = rint(W / s_w)`` in [-weight_max, weight_max].
  They are packed into ``(N/lanes, K/4, lanes * 4)`` int8 panels (four k's of one column
  contiguous: the operand ``vpdpbusd`` reads) and stored with ``s_w`` and the compensation
  ``128 * sum_k Wq[k, n]`` as build-time constants. Nothing is repacked per call.
- **Activations** (a parallel pre-pass per call): per row, ``s_a[m] = max_k |A[m, k]| / 127`` and
  ``Aq = rint(A * (127 / max)) + 128`` as u8 (x86's dot products multiply unsigned by signed), into
  a zero-padded copy of whole register tiles.
- **Dot products** accumulate in int32 (int8_dots.py: ``vpdpbusd``, ``vpmaddubsw``/``vpmaddwd``
  or plain TIR), exactly: ``sum_k Aq Wq = sum_k q_a Wq + 128 sum_k Wq``.
- **Epilogue**, as each register tile is written: ``C = float(acc - comp[n]) * (s_a[m] s_w[n]) +
  bias[n]``, then GELU (an FFN's first layer) or ``+ R[m, n]`` (a residual join) where the layer
  has one: the fp32 GEMM's fused epilogues, with no extra pass over the output.

The schedule follows the fp32 GEMM (matmul.py): a tile of ``rows`` x 2 vectors of int32
accumulators stays in registers while k runs, the weights are read as contiguous panels, and
parallel tasks are (chunk of row tiles, pair of column panels), panel pairs inner so that a
thread's chunk of activations stays in L2. Any row count ``m`` (symbolic: batch x sequence) and
any K and N work: K is zero-padded to whole groups of 4 and N to whole panel pairs, rows to whole
tiles; only edge tiles store with a bounds check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK_TILES = 4  # row tiles per parallel task
QUANT_LANES = 16  # the activation pre-pass works in runs of 16 floats


@dataclass(frozen=True)
class Int8Isa:
    """One kernel variant: the instruction set and the register tile it fits."""

    name: str  # "vnni" (AVX512-VNNI vpdpbusd), "avxvnni" (its 256-bit VEX form), "avx2" (vpmaddubsw + vpmaddwd)
    lanes: int  # int32 lanes of one vector register
    rows: int  # rows of the register tile: rows x 2 accumulators + weights + broadcast fit
    weight_max: int  # 127; 63 on AVX2, so vpmaddubsw's int16 pair sums cannot saturate
    cpu_features: tuple[str, ...]  # /proc/cpuinfo spelling of what it needs
    llvm_attrs: tuple[str, ...]


# 7 x 2 zmm accumulators (896 bytes: under TVM's 1 KiB stack limit, so they stay in registers) plus
# two weight vectors and the broadcast, of 32 registers. AVX2 has 16: 6 x 2 ymm for AVX-VNNI's
# one-instruction dot, 4 x 2 for AVX2's two instructions and their temporaries.
VNNI = Int8Isa("vnni", 16, 7, 127, ("avx512f", "avx512bw", "avx512_vnni"),
               ("+avx512f", "+avx512bw", "+avx512vnni"))
AVX_VNNI = Int8Isa("avxvnni", 8, 6, 127, ("avx2", "avx_vnni"), ("+avx2", "+avxvnni"))
AVX2 = Int8Isa("avx2", 8, 4, 63, ("avx2",), ("+avx2",))
ISAS = {isa.name: isa for isa in (VNNI, AVX_VNNI, AVX2)}


def padded(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def quantize_weight(weight: np.ndarray, weight_max: int) -> tuple[np.ndarray, np.ndarray]:
    """A (K, N) fp32 weight as (Wq (K, N) int8, s_w (N,) fp32), symmetric per column."""
    absmax = np.abs(weight).max(axis=0).astype(np.float32)  # (N,)
    scale = absmax / np.float32(weight_max)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.rint(weight / safe), -weight_max, weight_max).astype(np.int8)
    return q, scale.astype(np.float32)


def pack_weight(weight: np.ndarray, isa: Int8Isa) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kernel's weight operands: packed panels, column scales and the u8 compensation.

    ``panels[p, kk, 4 j + e] = Wq[4 kk + e, lanes p + j]`` (zero past K and N), ``(N/lanes, K/4,
    lanes * 4)`` int8; ``scales`` (N padded,) fp32; ``comp = 128 * sum_k Wq[k, n]`` (N padded,) int32.
    """
    k, n = weight.shape
    q, scale = quantize_weight(weight, isa.weight_max)
    k_pad, n_pad = padded(k, 4), padded(n, 2 * isa.lanes)
    full = np.zeros((k_pad, n_pad), np.int8)
    full[:k, :n] = q
    # (K/4, 4, N/lanes, lanes) -> (N/lanes, K/4, lanes, 4)
    panels = full.reshape(k_pad // 4, 4, n_pad // isa.lanes, isa.lanes).transpose(2, 0, 3, 1)
    panels = np.ascontiguousarray(panels).reshape(n_pad // isa.lanes, k_pad // 4, 4 * isa.lanes)
    scales = np.zeros(n_pad, np.float32)
    scales[:n] = scale
    comp = 128 * full.astype(np.int32).sum(axis=0)
    return panels, scales, comp.astype(np.int32)


def quantize_rows(k: int, k_row: int, rows_pad, signed: bool = False):
    """The pre-pass macro: ``Aq`` (u8, +128) and ``Sa`` (row scales) from ``A``, padded rows 0.

    ``signed`` writes the codes themselves as s8 (AMX's ``tdpbssd`` multiplies signed by signed:
    amx_int8.py); the scales are the same.

    Runs wholly inside K read A with plain vector loads; only a last partial run clamps its
    column index (a clamped vector index is a gather).
    """
    from tvm.script import tirx as T

    whole, runs = k // QUANT_LANES, k_row // QUANT_LANES

    def load(A, i, m, run, lane, clamp: bool):
        col = T.min(run * QUANT_LANES + lane, k - 1) if clamp else run * QUANT_LANES + lane
        return A[T.min(i, m - 1), col]

    def code(A, i, m, run, lane, inv, clamp: bool):
        # T.round is LLVM's nearbyint (ties to even, as numpy's rint); TVM's vectorizer scalarizes
        # T.nearbyint itself, and LLVM then gathered the loop across runs.
        q = T.max(T.min(T.round(load(A, i, m, run, lane, clamp) * inv), T.float32(127)), T.float32(-127))
        if clamp:  # columns past K: code 128 (q = 0), against zero weights
            q = T.if_then_else(run * QUANT_LANES + lane < k, q, T.float32(0))
        if signed:
            return T.Cast("int8", T.Cast("int32", q))
        return T.Cast("uint8", T.Cast("int32", q) + 128)

    @T.macro
    def quantize(A, Aq, Sa, m):
        for i in T.parallel(rows_pad):
            peak = T.decl_buffer((QUANT_LANES,), "float32")  # 64 bytes: on the stack
            for lane in T.vectorized(QUANT_LANES):
                peak[lane] = T.float32(0)
            for run in range(whole):  # max |A| in 16 lanes
                for lane in T.vectorized(QUANT_LANES):
                    peak[lane] = T.max(peak[lane], T.abs(load(A, i, m, run, lane, False)))
            for run in range(whole, runs):  # the clamped reads repeat the last element
                for lane in T.vectorized(QUANT_LANES):
                    peak[lane] = T.max(peak[lane], T.abs(load(A, i, m, run, lane, True)))
            for lane in range(1, QUANT_LANES):
                peak[0] = T.max(peak[0], peak[lane])
            if i >= m:
                peak[0] = T.float32(0)
            Sa[i] = peak[0] / T.float32(127)
            # inv = 127 / max, 0 for an all-zero row (its codes are then all 128: q = 0)
            peak[1] = T.if_then_else(peak[0] > T.float32(0), T.float32(127) / peak[0], T.float32(0))
            for run in range(whole):
                for lane in T.vectorized(QUANT_LANES):
                    Aq[i, run * QUANT_LANES + lane] = code(A, i, m, run, lane, peak[1], False)
            for run in range(whole, runs):
                for lane in T.vectorized(QUANT_LANES):
                    Aq[i, run * QUANT_LANES + lane] = code(A, i, m, run, lane, peak[1], True)

    return quantize


def tile_accumulator(isa: Int8Isa, rows: int, k: int, *, emulate: bool):
    """The macro ``accumulate(acc, Aq, W, row0, panel0)``: ``acc (rows, 2 lanes)`` int32 = the dot
    of ``Aq``'s rows ``row0..`` with panels ``panel0, panel0 + 1`` of ``W`` over all of K."""
    from tvm.script import tirx as T

    from .int8_dots import dot_step

    dot = dot_step(isa.name, isa.lanes, emulate=emulate)
    # The tile's rows and vectors are unrolled so that its accumulators get constant indices and
    # live in registers; the emulation's loops would only make LLVM slower to compile.
    tile_loop = T.serial if emulate else T.unroll

    @T.macro
    def accumulate(acc, Aq, W, row0, panel0):
        for r in T.unroll(rows):
            for c in T.vectorized(2 * isa.lanes):
                acc[r, c] = 0
        for k4 in range(padded(k, 4) // 4):
            for r in tile_loop(rows):
                for v in tile_loop(2):
                    dot(acc, r, v, Aq, row0 + r, k4, W, panel0 + v)

    return accumulate


def int8_dense(k: int, n: int, isa: Int8Isa, *, residual: bool = False, emulate: bool = False,
               activation: str | None = None):
    """The PrimFunc ``(A (m, k) f32, W panels, s_w, comp, bias (n,) f32, [R (m, n) f32,] C (m, n) f32)``.

    ``m`` is symbolic; ``C = act(dequant(Aq . Wq) + bias) (+ R)``, ``act`` the Relax GELU op named
    by ``activation`` (epilogues.GELU) or none. A matmul without a bias passes zeros.
    """
    from tvm.script import tirx as T

    from .epilogues import GELU

    lanes, rows = isa.lanes, isa.rows
    cols = 2 * lanes  # one tile: rows x 2 vectors
    k_pad, n_pad, k_row = padded(k, 4), padded(n, cols), padded(k, QUANT_LANES)
    pairs = n_pad // cols
    w_shape = (n_pad // lanes, k_pad // 4, 4 * lanes)
    accumulate = tile_accumulator(isa, rows, k, emulate=emulate)

    def tiles(m):
        return (m + rows - 1) // rows

    def chunks(m):
        return (tiles(m) + CHUNK_TILES - 1) // CHUNK_TILES

    def value(acc, Sa, Sw, Comp, Bias, R, r, c, row, col):
        # resolved as the kernel is built: only the layer's own epilogue is emitted
        out = T.Cast("float32", acc[r, c] - Comp[col]) * (Sa[row] * Sw[col]) + Bias[col]
        out = GELU[activation](out) if activation else out
        return out + R[row, col] if residual else out

    @T.macro
    def tile(Aq, W, Sa, Sw, Comp, Bias, R, C, t, pair, m):
        # No let-bound names in the task body: TVM heap-allocates each one per parallel iteration.
        acc = T.decl_buffer((rows, cols), "int32")  # rows x 2 vectors: 896 bytes on AVX-512
        accumulate(acc, Aq, W, t * rows, pair * 2)
        if t * rows + rows <= m and pair * cols + cols <= n:
            for r in T.unroll(rows):
                for c in T.vectorized(cols):
                    C[t * rows + r, pair * cols + c] = value(acc, Sa, Sw, Comp, Bias, R, r, c,
                                                             t * rows + r, pair * cols + c)
        else:  # an edge tile: only its real rows and columns
            for r in range(rows):
                for c in range(cols):
                    if t * rows + r < m and pair * cols + c < n:
                        C[t * rows + r, pair * cols + c] = value(acc, Sa, Sw, Comp, Bias, R, r, c,
                                                                 t * rows + r, pair * cols + c)

    @T.macro
    def body(A, W, Sw, Comp, Bias, R, C, m):
        # Sizes in terms of the parameters (FlattenBuffer wants them so), not let-bound.
        Aq = T.decl_buffer((tiles(m) * rows, k_row), "uint8")  # (m padded, K padded) u8 codes
        Sa = T.decl_buffer((tiles(m) * rows,), "float32")  # row scales, 0 on padding rows
        quantize_rows(k, k_row, tiles(m) * rows)(A, Aq, Sa, m)
        for task in T.parallel(chunks(m) * pairs):
            for inner in range(CHUNK_TILES):
                if task // pairs * CHUNK_TILES + inner < tiles(m):
                    tile(Aq, W, Sa, Sw, Comp, Bias, R, C, task // pairs * CHUNK_TILES + inner,
                         task % pairs, m)

    @T.prim_func(private=True)
    def dense(a: T.handle, w: T.handle, sw: T.handle, comp: T.handle, b: T.handle, c: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()
        A = T.match_buffer(a, (m, k), "float32")
        W = T.match_buffer(w, w_shape, "int8")
        Sw = T.match_buffer(sw, (n_pad,), "float32")
        Comp = T.match_buffer(comp, (n_pad,), "int32")
        Bias = T.match_buffer(b, (n,), "float32")
        C = T.match_buffer(c, (m, n), "float32")
        body(A, W, Sw, Comp, Bias, C, C, m)  # R unused without a residual

    @T.prim_func(private=True)
    def dense_residual(a: T.handle, w: T.handle, sw: T.handle, comp: T.handle, b: T.handle,
                       r: T.handle, c: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()
        A = T.match_buffer(a, (m, k), "float32")
        W = T.match_buffer(w, w_shape, "int8")
        Sw = T.match_buffer(sw, (n_pad,), "float32")
        Comp = T.match_buffer(comp, (n_pad,), "int32")
        Bias = T.match_buffer(b, (n,), "float32")
        R = T.match_buffer(r, (m, n), "float32")
        C = T.match_buffer(c, (m, n), "float32")
        body(A, W, Sw, Comp, Bias, R, C, m)

    return dense_residual if residual else dense


__all__ = ["AVX2", "AVX_VNNI", "ISAS", "Int8Isa", "VNNI", "int8_dense", "pack_weight", "padded", "quantize_rows",
           "quantize_weight"]
