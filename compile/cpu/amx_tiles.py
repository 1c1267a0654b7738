"""The tile steps of the AMX GEMM (amx.py): on AMX itself, or emulated in plain TIR loops.

Both variants take the same buffers, element offsets and strides, so the emulation exercises the
kernel's addressing as the hardware would read it. On AMX each step is one LLVM intrinsic (the
non-``.internal`` forms, whose operands are immediates, pointers and i64 byte strides: TVM
cannot express LLVM's ``x86_amx`` type). Tile registers: C 0-3 (fp32, 16x16), A 4-5 (16 rows x
32 bf16), B 6-7 (16 k-pairs x 16 columns x 2 bf16).
"""

from __future__ import annotations

from types import SimpleNamespace


def to_bf16(value):
    """fp32 -> bf16 bits (uint16), round to nearest even: the rounding bias is 0x7FFF plus the
    lowest kept bit."""
    from tvm.script import tirx as T

    bits = T.reinterpret("uint32", value)
    half = T.uint32(16)
    return T.Cast("uint16", (bits + T.uint32(0x7FFF) + ((bits >> half) & T.uint32(1))) >> half)


def from_bf16(bits):
    from tvm.script import tirx as T

    return T.reinterpret("float32", T.Cast("uint32", bits) << T.uint32(16))


def amx_intrin(name: str, *args):
    from tvm.script import tirx as T

    return T.call_llvm_intrin("void", T.llvm_lookup_intrinsic_id(name), *args)


def c_tile_steps():
    """The macros ``zero_c()`` (C tiles 0-3 to zero) and ``store_c(out, out_row, out_col,
    out_stride)`` (tile t to rows 16 (t // 2), columns 16 (t % 2) of ``out`` at ``[out_row,
    out_col]``, whose rows are ``out_stride`` 4-byte elements apart): the bf16 and int8 blocks'."""
    from tvm.script import tirx as T

    def tile(index: int):
        return T.int8(index)

    @T.macro
    def zero_c():
        T.evaluate(amx_intrin("llvm.x86.tilezero", tile(0)))
        T.evaluate(amx_intrin("llvm.x86.tilezero", tile(1)))
        T.evaluate(amx_intrin("llvm.x86.tilezero", tile(2)))
        T.evaluate(amx_intrin("llvm.x86.tilezero", tile(3)))

    @T.macro
    def store_c(out, out_row, out_col, out_stride):
        # The output's rows are out_stride * 4 bytes apart. No let-bound names anywhere here:
        # in a parallel body TVM turns each into a heap allocation per iteration.
        T.evaluate(amx_intrin("llvm.x86.tilestored64", tile(0),
                           T.address_of(out[out_row, out_col]), T.int64(out_stride * 4)))
        T.evaluate(amx_intrin("llvm.x86.tilestored64", tile(1),
                           T.address_of(out[out_row, out_col + 16]), T.int64(out_stride * 4)))
        T.evaluate(amx_intrin("llvm.x86.tilestored64", tile(2),
                           T.address_of(out[out_row + 16, out_col]), T.int64(out_stride * 4)))
        T.evaluate(amx_intrin("llvm.x86.tilestored64", tile(3),
                           T.address_of(out[out_row + 16, out_col + 16]), T.int64(out_stride * 4)))

    return zero_c, store_c


def _amx_ops():
    from tvm.script import tirx as T

    zero_c, store_c = c_tile_steps()

    def tile(index: int):
        return T.int8(index)

    @T.macro
    def fill_config(cfg):
        # Palette 1; tiles 0-7 all 16 rows x 64 bytes (colsb is a u16 at byte 16 + 2t, rows a u8
        # at byte 48 + t); the rest of the 64 bytes must be zero.
        for i in range(64):
            cfg[i] = T.uint8(0)
        cfg[0] = T.uint8(1)
        for t in range(8):
            cfg[16 + 2 * t] = T.uint8(64)
            cfg[48 + t] = T.uint8(16)

    @T.macro
    def load_config(cfg):
        T.evaluate(amx_intrin("llvm.x86.ldtilecfg", T.address_of(cfg[0])))

    @T.macro
    def block(abf, w, out, out_row, out_col, out_stride, row0, panel0, k_pad):
        zero_c()
        for step in range(k_pad // 32):  # A's rows are k_pad * 2 bytes apart
            T.evaluate(amx_intrin("llvm.x86.tileloadd64", tile(4),
                               T.address_of(abf[row0, step * 32]), T.int64(k_pad * 2)))
            T.evaluate(amx_intrin("llvm.x86.tileloadd64", tile(5),
                               T.address_of(abf[row0 + 16, step * 32]), T.int64(k_pad * 2)))
            T.evaluate(amx_intrin("llvm.x86.tileloadd64", tile(6),
                               T.address_of(w[panel0, step * 16, 0, 0]), T.int64(64)))
            T.evaluate(amx_intrin("llvm.x86.tileloadd64", tile(7),
                               T.address_of(w[panel0 + 1, step * 16, 0, 0]), T.int64(64)))
            T.evaluate(amx_intrin("llvm.x86.tdpbf16ps", tile(0), tile(4), tile(6)))
            T.evaluate(amx_intrin("llvm.x86.tdpbf16ps", tile(1), tile(4), tile(7)))
            T.evaluate(amx_intrin("llvm.x86.tdpbf16ps", tile(2), tile(5), tile(6)))
            T.evaluate(amx_intrin("llvm.x86.tdpbf16ps", tile(3), tile(5), tile(7)))
        store_c(out, out_row, out_col, out_stride)

    @T.macro
    def release():
        T.evaluate(amx_intrin("llvm.x86.tilerelease"))

    return SimpleNamespace(fill_config=fill_config, load_config=load_config, block=block,
                           release=release)


def _emulated_ops():
    from tvm.script import tirx as T

    @T.macro
    def fill_config(cfg):
        cfg[0] = T.uint8(1)  # nothing to configure; keeps the buffer used

    @T.macro
    def load_config(cfg):
        T.evaluate(0)

    @T.macro
    def block(abf, w, out, out_row, out_col, out_stride, row0, panel0, k_pad):
        acc = T.decl_buffer((4, 16, 16), "float32", scope="local")  # tiles 0-3
        a_tiles = T.decl_buffer((2, 16, 32), "uint16", scope="local")  # tiles 4-5
        b_tiles = T.decl_buffer((2, 16, 32), "uint16", scope="local")  # tiles 6-7
        for t, r, j in T.grid(4, 16, 16):
            acc[t, r, j] = T.float32(0)
        for step in range(k_pad // 32):
            for r, c in T.grid(16, 32):  # tileloadd: the same rows the strides above address
                a_tiles[0, r, c] = abf[row0 + r, step * 32 + c]
                a_tiles[1, r, c] = abf[row0 + 16 + r, step * 32 + c]
                b_tiles[0, r, c] = w[panel0, step * 16 + r, c // 2, c % 2]
                b_tiles[1, r, c] = w[panel0 + 1, step * 16 + r, c // 2, c % 2]
            for t, r, j, kk in T.grid(4, 16, 16, 16):  # tdpbf16ps: two fp32 adds per pair
                acc[t, r, j] = acc[t, r, j] + from_bf16(a_tiles[t // 2, r, 2 * kk]) * from_bf16(
                    b_tiles[t % 2, kk, 2 * j])
                acc[t, r, j] = acc[t, r, j] + from_bf16(a_tiles[t // 2, r, 2 * kk + 1]) * from_bf16(
                    b_tiles[t % 2, kk, 2 * j + 1])
        for t, r, j in T.grid(4, 16, 16):  # tilestored: tile t at rows 16 (t // 2), cols 16 (t % 2)
            out[out_row + t // 2 * 16 + r, out_col + t % 2 * 16 + j] = acc[t, r, j]

    @T.macro
    def release():
        T.evaluate(0)

    return SimpleNamespace(fill_config=fill_config, load_config=load_config, block=block,
                           release=release)


def tile_ops(emulate: bool):
    """``fill_config(cfg)`` (once per call), ``load_config(cfg)`` (once per parallel task),
    ``block(...)`` and ``release()``.

    ``block(abf, w, out, out_row, out_col, out_stride, row0, panel0, k_pad)`` computes the 32x32
    block of rows ``row0..`` and panels ``panel0, panel0 + 1`` over all of K and stores it to the
    fp32 buffer ``out`` at ``[out_row, out_col]``, whose rows are ``out_stride`` floats apart.
    """
    return _emulated_ops() if emulate else _amx_ops()


__all__ = ["amx_intrin", "c_tile_steps", "from_bf16", "tile_ops", "to_bf16"]
