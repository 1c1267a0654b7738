"""MoE experts in int8: the grouped GEMM of moe_rows.py on int8 weights and per-row u8 activations.

moe_rows.py packs the tokens each expert took into one ``(R, K)`` block, expert by expert, each
expert's rows starting on an 8-row tile of its own, with each tile's expert and filled rows in
``tiles (R/8, 2)``. This kernel is that block's GEMM with the numerics of the dense int8 GEMM
(int8.py): every expert's ``(K, N)`` weight quantized per output column at build time and
packed into the same int8 panels, every row of the block quantized per row at run time (one
pre-pass over the block), int32 sums, and the dequantize and the expert's bias in the epilogue.
An 8-row tile runs as two 4-row halves (8 int32 accumulators each), the second only when the
tile has more than 4 filled rows; rows past the filled ones hold no result, and nothing reads
them (moe_rows.py's ``slot_row`` points at filled rows only).
"""

from __future__ import annotations

import numpy as np

from .int8 import QUANT_LANES, Int8Isa, pack_weight, padded

TILE_ROWS = 8  # moe_rows.TILE_ROWS: rows per tile of the packed block
HALF = TILE_ROWS // 2


def pack_expert_weights(weight: np.ndarray, isa: Int8Isa) -> list[np.ndarray]:
    """(E, K, N) fp32 -> panels (E * N/lanes, K/4, 4 lanes) int8, scales and compensation (E * N,)."""
    packed = [pack_weight(w, isa) for w in weight]  # per expert: panels, scales, comp
    return [np.ascontiguousarray(np.concatenate([p[i] for p in packed])) for i in range(3)]


def grouped_int8_kernel(k: int, n: int, isa: Int8Isa, *, emulate: bool = False):
    """PrimFunc: a (R, K) f32, panels, scales, comp, b (E, 1, N) f32, tiles (R/8, 2) int64 -> c (R, N).

    ``n`` must be whole panel pairs (moe_rows.py takes N in whole 32-column panels).
    """
    from tvm.script import tirx as T

    from .int8 import quantize_rows, tile_accumulator

    lanes = isa.lanes
    cols = 2 * lanes
    if n % cols:
        raise ValueError(f"grouped int8 GEMM needs N in whole {cols}-column panel pairs, not {n}.")
    k_pad, k_row, pairs = padded(k, 4), padded(k, QUANT_LANES), n // cols
    accumulate = tile_accumulator(isa, HALF, k, emulate=emulate)

    @T.macro
    def half_tile(Aq, W, Sa, Sw, Comp, B, C, row0, pair, expert):
        acc = T.decl_buffer((HALF, cols), "int32")  # 4 x 2 vectors: on the stack, in registers
        accumulate(acc, Aq, W, row0, expert * (n // lanes) + pair * 2)
        for r in T.unroll(HALF):
            for c in T.vectorized(cols):
                C[row0 + r, pair * cols + c] = T.Cast("float32", acc[r, c] - Comp[expert * n + pair * cols + c]) * (
                    Sa[row0 + r] * Sw[expert * n + pair * cols + c]) + B[expert, 0, pair * cols + c]

    @T.prim_func(private=True)
    def moe_grouped_int8(var_a: T.handle, var_w: T.handle, var_sw: T.handle, var_comp: T.handle,
                         var_b: T.handle, var_tiles: T.handle, var_c: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        r, e, nt = T.int64(), T.int64(), T.int64()
        A = T.match_buffer(var_a, (r, k), "float32")
        W = T.match_buffer(var_w, (e * (n // lanes), k_pad // 4, 4 * lanes), "int8")
        Sw = T.match_buffer(var_sw, (e * n,), "float32")
        Comp = T.match_buffer(var_comp, (e * n,), "int32")
        B = T.match_buffer(var_b, (e, 1, n), "float32")
        tiles = T.match_buffer(var_tiles, (nt, 2), "int64")
        C = T.match_buffer(var_c, (r, n), "float32")
        Aq = T.decl_buffer((r, k_row), "uint8")  # the block's u8 codes (R is whole tiles)
        Sa = T.decl_buffer((r,), "float32")
        quantize_rows(k, k_row, r)(A, Aq, Sa, r)
        for task in T.parallel(nt * pairs):  # (row tile, panel pair); no let-bound names here
            for half in range(2):
                if T.Cast("int64", half * HALF) < tiles[task // pairs, 1]:
                    half_tile(Aq, W, Sa, Sw, Comp, B, C, task // pairs * TILE_ROWS + half * HALF,
                              task % pairs, tiles[task // pairs, 0])

    return moe_grouped_int8


__all__ = ["grouped_int8_kernel", "pack_expert_weights"]
