"""The inner step of the int8 GEMM (int8.py): one u8 x s8 dot product of 4-deep k into int32 lanes.

Each step adds, for one row r and one vector of ``lanes`` output columns, the 4-deep dot product
of that row's four u8 activations (read as one int32, broadcast to every lane) with the 4 x lanes
int8 weights of a packed panel (``lanes * 4`` contiguous bytes, column-major within the group of
4 k's: the layout ``vpdpbusd`` reads):

- ``vnni``: ``vpdpbusd`` (AVX512-VNNI, ``llvm.x86.avx512.vpdpbusd.512``): 16 int32 lanes, the four
  u8 x s8 products summed exactly into each lane. LLVM 22 types its operands ``<64 x i8>`` (older
  LLVMs, and TVM's own ``dot_16x4_vnni``, ``<16 x i32>``).
- ``avxvnni``: the same on 8 lanes (AVX-VNNI's VEX ``vpdpbusd``, ``llvm.x86.avx512.vpdpbusd.256``):
  Alder Lake and later client CPUs, which have VNNI but no AVX-512.
- ``avx2``: ``vpmaddubsw`` (``llvm.x86.avx2.pmadd.ub.sw``) sums pairs of u8 x s8 products into int16
  with signed saturation, then ``vpmaddwd`` (``llvm.x86.avx2.pmadd.wd``) by ones sums the pairs
  into int32 lanes. The AVX2 build quantizes weights to 7 bits (|w| <= 63) so that a pair sum,
  at most 2 x 255 x 63 = 32130, never reaches int16's 32767: the saturation never fires and the
  sums are exact, at the price of one bit of weight precision (int8.py, ``Int8Isa.weight_max``).
- ``emulate=True`` replaces either instruction by plain TIR loops with its semantics (AVX2's
  int16 saturation included), over the same buffers and indices, so tests check the numerics and
  the addressing of both kernels on any x86-64 host.
"""

from __future__ import annotations


def _vnni_dot(lanes: int):
    from tvm.script import tirx as T

    # The 256-bit form is AVX-VNNI's VEX vpdpbusd where the CPU has no AVX-512 (LLVM picks the
    # encoding from the target's features).
    intrinsic = "llvm.x86.avx512.vpdpbusd.512" if lanes == 16 else "llvm.x86.avx512.vpdpbusd.256"

    @T.macro
    def dot(acc, r, v, aq, row, k4, w, panel):
        acc[r, T.ramp(v * lanes, 1, lanes)] = T.call_llvm_pure_intrin(
            f"int32x{lanes}", T.llvm_lookup_intrinsic_id(intrinsic),
            acc[r, T.ramp(v * lanes, 1, lanes)],
            T.reinterpret(f"uint8x{4 * lanes}", T.broadcast(
                T.reinterpret("int32", aq[row, T.ramp(k4 * 4, 1, 4)]), lanes)),
            w[panel, k4, T.ramp(0, 1, 4 * lanes)])

    return dot


def _avx2_dot(lanes: int):
    from tvm.script import tirx as T

    @T.macro
    def dot(acc, r, v, aq, row, k4, w, panel):
        acc[r, T.ramp(v * lanes, 1, lanes)] = acc[r, T.ramp(v * lanes, 1, lanes)] + T.call_llvm_pure_intrin(
            "int32x8", T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            T.call_llvm_pure_intrin(
                "int16x16", T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                T.reinterpret("uint8x32", T.broadcast(
                    T.reinterpret("int32", aq[row, T.ramp(k4 * 4, 1, 4)]), lanes)),
                w[panel, k4, T.ramp(0, 1, 4 * lanes)]),
            T.broadcast(T.int16(1), 2 * lanes))

    return dot


def _emulated_dot(lanes: int, saturate_pairs: bool):
    from tvm.script import tirx as T

    def product(aq, row, k4, w, panel, j, e):
        return T.Cast("int32", aq[row, k4 * 4 + e]) * T.Cast("int32", w[panel, k4, j * 4 + e])

    def pair(aq, row, k4, w, panel, j, first):
        total = product(aq, row, k4, w, panel, j, first) + product(aq, row, k4, w, panel, j, first + 1)
        if saturate_pairs:  # vpmaddubsw's int16 result
            return T.max(T.min(total, T.int32(32767)), T.int32(-32768))
        return total

    @T.macro
    def dot(acc, r, v, aq, row, k4, w, panel):
        for j in range(lanes):
            acc[r, v * lanes + j] = (acc[r, v * lanes + j] + pair(aq, row, k4, w, panel, j, 0)
                                     + pair(aq, row, k4, w, panel, j, 2))

    return dot


def dot_step(isa: str, lanes: int, *, emulate: bool):
    """The macro ``dot(acc, r, v, aq, row, k4, w, panel)``: ``acc[r, v*lanes : (v+1)*lanes] +=``
    the dot of ``aq[row, 4 k4 : 4 k4 + 4]`` (u8) with ``w[panel, k4, :]`` (s8, lanes x 4)."""
    if emulate:
        return _emulated_dot(lanes, saturate_pairs=isa == "avx2")
    return _avx2_dot(lanes) if isa == "avx2" else _vnni_dot(lanes)


__all__ = ["dot_step"]
