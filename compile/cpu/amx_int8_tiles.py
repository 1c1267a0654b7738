"""The tile step of the AMX int8 GEMM (amx_int8.py): on AMX itself, or emulated in plain TIR loops.

The int8 twin of amx_tiles.py's ``block``, whose tile configuration, ``ldtilecfg`` and
``tilerelease`` it shares (every tile is 16 rows x 64 bytes in both). Tile registers: C 0-3
(int32, 16x16), A 4-5 (16 rows x 64 s8), B 6-7 (16 k-quads x 16 columns x 4 s8: the VNNI-4
layout). One ``tdpbssd`` adds a 16x16x64 s8 x s8 product into int32 exactly; it wraps on
overflow, which 64-deep steps of 127 x 127 products cannot reach below K = 133,000.

Both variants take the same buffers, element offsets and strides. The output buffer is fp32:
the int32 tiles are stored as their bits (``tilestored`` writes raw bytes), and the epilogue
reads them back with a reinterpret, converting in place.
"""

from __future__ import annotations

from types import SimpleNamespace

from .amx_tiles import amx_intrin, c_tile_steps, tile_ops

TILE_K = 64  # s8 values in one 64-byte tile row of A: the depth of one tdpbssd


def _amx_block():
    from tvm.script import tirx as T

    zero_c, store_c = c_tile_steps()

    def tile(index: int):
        return T.int8(index)

    @T.macro
    def block(aq, w, out, out_row, out_col, out_stride, row0, panel0, k_pad):
        zero_c()
        for step in range(k_pad // TILE_K):  # A's rows are k_pad bytes apart, B's tile is 1 KB
            T.evaluate(amx_intrin("llvm.x86.tileloadd64", tile(4),
                               T.address_of(aq[row0, step * TILE_K]), T.int64(k_pad)))
            T.evaluate(amx_intrin("llvm.x86.tileloadd64", tile(5),
                               T.address_of(aq[row0 + 16, step * TILE_K]), T.int64(k_pad)))
            T.evaluate(amx_intrin("llvm.x86.tileloadd64", tile(6),
                               T.address_of(w[panel0, step * 16, 0]), T.int64(64)))
            T.evaluate(amx_intrin("llvm.x86.tileloadd64", tile(7),
                               T.address_of(w[panel0 + 1, step * 16, 0]), T.int64(64)))
            T.evaluate(amx_intrin("llvm.x86.tdpbssd", tile(0), tile(4), tile(6)))
            T.evaluate(amx_intrin("llvm.x86.tdpbssd", tile(1), tile(4), tile(7)))
            T.evaluate(amx_intrin("llvm.x86.tdpbssd", tile(2), tile(5), tile(6)))
            T.evaluate(amx_intrin("llvm.x86.tdpbssd", tile(3), tile(5), tile(7)))
        store_c(out, out_row, out_col, out_stride)

    return block


def _emulated_block():
    from tvm.script import tirx as T

    def product(a_tiles, b_tiles, t, r, j, kk, e):
        return T.Cast("int32", a_tiles[t // 2, r, 4 * kk + e]) * T.Cast("int32", b_tiles[t % 2, kk, 4 * j + e])

    @T.macro
    def block(aq, w, out, out_row, out_col, out_stride, row0, panel0, k_pad):
        acc = T.decl_buffer((4, 16, 16), "int32", scope="local")  # tiles 0-3
        a_tiles = T.decl_buffer((2, 16, TILE_K), "int8", scope="local")  # tiles 4-5
        b_tiles = T.decl_buffer((2, 16, TILE_K), "int8", scope="local")  # tiles 6-7
        for t, r, j in T.grid(4, 16, 16):
            acc[t, r, j] = 0
        for step in range(k_pad // TILE_K):
            for r, c in T.grid(16, TILE_K):  # tileloadd: the same bytes the strides above address
                a_tiles[0, r, c] = aq[row0 + r, step * TILE_K + c]
                a_tiles[1, r, c] = aq[row0 + 16 + r, step * TILE_K + c]
                b_tiles[0, r, c] = w[panel0, step * 16 + r, c]
                b_tiles[1, r, c] = w[panel0 + 1, step * 16 + r, c]
            for t, r, j, kk in T.grid(4, 16, 16, 16):  # tdpbssd: four s8 x s8 products per k-quad
                acc[t, r, j] = (acc[t, r, j] + product(a_tiles, b_tiles, t, r, j, kk, 0)
                                + product(a_tiles, b_tiles, t, r, j, kk, 1)
                                + product(a_tiles, b_tiles, t, r, j, kk, 2)
                                + product(a_tiles, b_tiles, t, r, j, kk, 3))
        for t, r, j in T.grid(4, 16, 16):  # tilestored: int32 bits, tile t at rows 16 (t // 2), cols 16 (t % 2)
            out[out_row + t // 2 * 16 + r, out_col + t % 2 * 16 + j] = T.reinterpret("float32", acc[t, r, j])

    return block


def int8_tile_ops(emulate: bool):
    """amx_tiles.tile_ops's ``fill_config``, ``load_config`` and ``release`` with the int8 ``block``.

    ``block(aq, w, out, out_row, out_col, out_stride, row0, panel0, k_pad)`` computes the int32
    32x32 block of s8 rows ``row0..`` of ``aq`` and panels ``panel0, panel0 + 1`` of ``w`` over all
    of K and stores its bits to the fp32 buffer ``out`` at ``[out_row, out_col]``, whose rows are
    ``out_stride`` elements apart.
    """
    shared = tile_ops(emulate)
    return SimpleNamespace(fill_config=shared.fill_config, load_config=shared.load_config,
                           release=shared.release, block=_emulated_block() if emulate else _amx_block())


__all__ = ["TILE_K", "int8_tile_ops"]
