"""MoE experts in bf16: the grouped GEMM of moe_rows.py on bf16 weights, fp32 sums.

moe_rows.py packs the tokens each expert took into one ``(R, K)`` block, expert by expert, each
expert's rows starting on an 8-row tile of its own, with each tile's expert and filled rows in
``tiles (R/8, 2)``. These kernels are that block's GEMM with the numerics of the dense bf16 GEMMs
(bf16 products of round-to-nearest-even operands, exact in fp32, summed in fp32): every expert's
``(K, N)`` weight rounded to bf16 and packed at build time into its dense kernel's panels, every
expert's panels one after another, and the block rounded to bf16 once per call (one pre-pass).
Half the weight bytes of fp32: at batch 1 the experts are a stream of weights (docs/moe.md), so
that is what the bf16 build buys there.

- ``grouped_dpbf16_kernel`` (AVX512-BF16, ``vdpbf16ps``): one task per (row tile, 32-column
  panel); a tile's 8 x 32 fp32 sums stay in 16 zmm registers while K runs; a tile with at most 4
  filled rows runs a 4-row body, as the fp32 grouped GEMM does.
- ``grouped_amx_kernel`` (AMX): amx_tiles.py's 32 x 32 block (four C tiles, ``tdpbf16ps``) on up to
  four consecutive 8-row tiles of one expert: the task of the first of them (the tile where the
  expert starts or a multiple of four) computes 32 rows from there into a scratch block and
  writes back the filled rows of its tiles, bias added. Rows of the block past its tiles belong
  to the next expert or are padding: they are computed (the tile unit is 16 rows) and dropped.

``emulate=True`` builds either with its bf16 instructions as TIR arithmetic (dpbf16.py,
amx_tiles.py), for tests on hosts without them. Rows past a tile's filled ones hold no result,
and nothing reads them (moe_rows.py's ``slot_row`` points at filled rows only).
"""

from __future__ import annotations

import numpy as np

from . import amx, dpbf16
from .amx import padded

TILE_ROWS = 8  # moe_rows.TILE_ROWS: rows per tile of the packed block
SMALL_ROWS = 4  # moe_rows.SMALL_TILE_ROWS
LANES = dpbf16.LANES
COLS = dpbf16.PANEL_COLS  # 32 output columns per register tile / AMX block
AMX_TILES = amx.BLOCK_ROWS // TILE_ROWS  # 8-row tiles one AMX block covers


def pack_expert_weights(weight: np.ndarray, kernel: str) -> list[np.ndarray]:
    """(E, K, N) fp32 -> every expert's panels of the ``kernel``'s dense layout, one after another:
    ``avx512bf16`` (E * N/32, K/2, 32) uint32; ``amx`` (E * N/16, K/2 (padded to 16), 16, 2) uint16."""
    pack = dpbf16.pack_weight if kernel == "avx512bf16" else amx.pack_weight
    return [np.ascontiguousarray(np.concatenate([pack(w) for w in weight]))]


def grouped_bf16_kernel(kernel: str, k: int, n: int, *, emulate: bool = False):
    """The grouped PrimFunc of ``kernel`` ("amx" or "avx512bf16"): a (R, K) f32, panels,
    b (E, 1, N) f32, tiles (R/8, 2) int64 -> c (R, N) f32. ``n`` must be whole 32-column panels."""
    if n % COLS:
        raise ValueError(f"grouped bf16 GEMM needs N in whole {COLS}-column panels, not {n}.")
    make = grouped_amx_kernel if kernel == "amx" else grouped_dpbf16_kernel
    return make(k, n, emulate=emulate)


def bf16_experts(precision: str):
    """The MoE experts' grouped GEMM for a bf16 pipeline switch ("bf16", "bf16-avx512bf16",
    "-emulated"), as a bf16.DenseLowering for moe_rows.compact_expert_rows."""
    from .bf16 import DenseLowering

    kernel = "avx512bf16" if "avx512bf16" in precision else "amx"
    emulate = precision.endswith("-emulated")

    def build(k: int, n: int):
        return grouped_bf16_kernel(kernel, k, n, emulate=emulate), f"moe_grouped_{kernel}_{k}x{n}"

    label = f"bf16: the {kernel} grouped kernel" + (", emulated in TIR loops" if emulate else "")
    return DenseLowering(label=label, kernel=build, weight_operands=lambda weight: pack_expert_weights(weight, kernel))


def grouped_dpbf16_kernel(k: int, n: int, *, emulate: bool = False):
    from tvm.script import tirx as T

    pairs, panels = padded(k, 2) // 2, n // COLS

    def tile(rows: int):
        sums = dpbf16.tile_sums(rows, pairs, emulate)

        @T.macro
        def _tile(Apk, W, B, C, row0, panel, expert):
            acc0 = T.decl_buffer((rows * LANES,), "float32")  # columns 0-15 of the panel
            acc1 = T.decl_buffer((rows * LANES,), "float32")  # columns 16-31
            sums(acc0, acc1, Apk, W, row0, expert * panels + panel)  # the expert's own panel
            for r in T.unroll(rows):
                for j in T.vectorized(LANES):
                    C[row0 + r, panel * COLS + j] = acc0[r * LANES + j] + B[expert, 0, panel * COLS + j]
                    C[row0 + r, panel * COLS + LANES + j] = (
                        acc1[r * LANES + j] + B[expert, 0, panel * COLS + LANES + j])

        return _tile

    full_tile, small_tile = tile(TILE_ROWS), tile(SMALL_ROWS)

    @T.prim_func(private=True)
    def moe_grouped_dpbf16(var_a: T.handle, var_w: T.handle, var_b: T.handle, var_tiles: T.handle,
                           var_c: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        r, e, nt = T.int64(), T.int64(), T.int64()
        A = T.match_buffer(var_a, (r, k), "float32")
        W = T.match_buffer(var_w, (e * panels, pairs, COLS), "uint32")
        B = T.match_buffer(var_b, (e, 1, n), "float32")
        tiles = T.match_buffer(var_tiles, (nt, 2), "int64")
        C = T.match_buffer(var_c, (r, n), "float32")
        with T.attr(0, "pragma_import_llvm", dpbf16.DPBF16_IR):
            Apk = T.decl_buffer((r, pairs), "uint32")  # the block as bf16 pairs, rounded once per call
            for i in T.parallel(r):
                for chunk in range(pairs // LANES):
                    for kv in T.vectorized(LANES):
                        Apk[i, chunk * LANES + kv] = dpbf16.bf16_pair(A, i, chunk * LANES + kv, k)
                for kv in range(pairs % LANES):
                    Apk[i, pairs // LANES * LANES + kv] = dpbf16.bf16_pair(A, i, pairs // LANES * LANES + kv, k)
            for task in T.parallel(nt * panels):  # (row tile, panel); no let-bound names here
                if tiles[task // panels, 1] > T.int64(SMALL_ROWS):
                    full_tile(Apk, W, B, C, task // panels * TILE_ROWS, task % panels, tiles[task // panels, 0])
                elif tiles[task // panels, 1] > T.int64(0):
                    small_tile(Apk, W, B, C, task // panels * TILE_ROWS, task % panels, tiles[task // panels, 0])

    return moe_grouped_dpbf16


def grouped_amx_kernel(k: int, n: int, *, emulate: bool = False):
    from tvm.script import tirx as T

    from .amx_tiles import tile_ops, to_bf16

    k_pad, pairs = padded(k, amx.TILE_K), n // COLS
    w_panels = n // amx.TILE_COLS  # 16-column panels per expert
    ops = tile_ops(emulate)
    pad_rows = amx.BLOCK_ROWS - TILE_ROWS  # a block that starts on the last tile reads this far past R

    @T.macro
    def write_back(scratch, B, C, tiles, nt, t, pair, expert):
        # the block's tiles: t and the ones after it of the same expert, up to a multiple of four
        for j in range(AMX_TILES):  # T.min: TIR's "and" may load both sides, keep it in bounds
            if j == 0 or (t + j < nt and (t + j) % AMX_TILES != 0 and tiles[T.min(t + j, nt - 1), 0] == expert):
                for i in range(TILE_ROWS):
                    if T.Cast("int64", i) < tiles[T.min(t + j, nt - 1), 1]:
                        for c in T.vectorized(COLS):
                            C[(t + j) * TILE_ROWS + i, pair * COLS + c] = (
                                scratch[j * TILE_ROWS + i, c] + B[expert, 0, pair * COLS + c])

    @T.prim_func(private=True)
    def moe_grouped_amx(var_a: T.handle, var_w: T.handle, var_b: T.handle, var_tiles: T.handle,
                        var_c: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        r, e, nt = T.int64(), T.int64(), T.int64()
        A = T.match_buffer(var_a, (r, k), "float32")
        W = T.match_buffer(var_w, (e * w_panels, k_pad // 2, amx.TILE_COLS, 2), "uint16")
        B = T.match_buffer(var_b, (e, 1, n), "float32")
        tiles = T.match_buffer(var_tiles, (nt, 2), "int64")
        C = T.match_buffer(var_c, (r, n), "float32")
        Abf = T.decl_buffer((r + pad_rows, k_pad), "uint16")  # bf16 bits, zero past R and K
        for i in T.parallel(r + pad_rows):
            for kc in range(k_pad // 16):
                for kv in T.vectorized(16):
                    Abf[i, kc * 16 + kv] = T.if_then_else(
                        i < r and kc * 16 + kv < k, to_bf16(A[T.min(i, r - 1), T.min(kc * 16 + kv, k - 1)]),
                        T.uint16(0))
        cfg = T.decl_buffer((64,), "uint8")  # filled once, read by every task's ldtilecfg
        ops.fill_config(cfg)
        for task in T.parallel(nt * pairs):  # (row tile, panel pair); no let-bound names here
            # the first tile of a block: a multiple of four, or where its expert's tiles start
            if task // pairs % AMX_TILES == 0 or tiles[T.max(task // pairs - 1, 0), 0] != tiles[task // pairs, 0]:
                scratch = T.decl_buffer((amx.BLOCK_ROWS, COLS), "float32", scope="local")
                ops.load_config(cfg)
                ops.block(Abf, W, scratch, 0, 0, COLS, task // pairs * TILE_ROWS,
                          tiles[task // pairs, 0] * w_panels + task % pairs * 2, k_pad)
                ops.release()
                write_back(scratch, B, C, tiles, nt, task // pairs, task % pairs, tiles[task // pairs, 0])

    return moe_grouped_amx


__all__ = ["bf16_experts", "grouped_amx_kernel", "grouped_bf16_kernel", "grouped_dpbf16_kernel", "pack_expert_weights"]
