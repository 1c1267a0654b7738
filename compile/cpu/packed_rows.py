"""Embedding rows read from the LM head's packed weight: a tied table stored once per build.

GPT-2-style models tie the token embedding ``E (V, D)`` to the LM head, ``logits = h @ E^T``.
A reduced-precision build packs ``E^T`` for its dense kernel (bf16 panels, or int8 panels and
column scales); without this, the embedding lookup ``take(E, ids)`` would also keep ``E`` in
fp32, which for GPT-2 base is 154 MB beside a 77 MB bf16 or 39 MB int8 head. Here the lookup
reads row ``t`` of ``E`` back out of the head's packed operands instead: column ``t`` of the
packed ``(D, V)`` weight, converted to fp32 (bf16 bits widened; int8 codes times the column's
scale). A tied table is then stored once, at the build's precision, as llama.cpp's row lookup
reads quantized tables and ONNX Runtime's ``quantize_dynamic`` quantizes the Gather's table.

int8 rows are what the head multiplies by: the embedding takes int8's rounding (1/254 of the
row's largest magnitude), as ONNX Runtime's int8 does. bf16 rows add a second table, the bf16
rounding of what the head's rounding lost (``bf16_residual``, ``(V, D)`` uint16): hi + lo keeps
about 16 significant bits, so the embedding is fp32 for every practical purpose (OpenVINO's bf16
keeps its Gather in fp32 too), and the tied table still costs 4 bytes per value, the fp32
table's size. Without it bf16 rounding of the embedding alone was the largest error of a bf16
BERT (docs/benchmarks.md). Ids are clamped to the table, as the runtime refuses ids out of range
before a call (runtime/validate.py).

Each reader is one PrimFunc ``(operands..., ids (count,) int64, out (count, D) f32)``, ``count``
symbolic; rows run in parallel and each reads its ``D`` values with the panel stride (one cache
line per value at worst: 98 K lines for 128 tokens of GPT-2's 768 columns, about what the
dense kernels read per layer).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Relax's OpPatternKind.kOpaque: FuseOps leaves the reader alone. Its reads depend on the ids'
# values, and with static shapes FuseOps would otherwise fuse the ids' reshape into it.
OPAQUE = 8


def rows_kernel(operand_types: list[tuple[tuple[int, ...], str]], k: int, n: int,
                element: Callable):
    """The reader of ``element(operands, t, c)`` (row ``t`` of the table, column ``c``) from one or
    two packed operands of the given (shape, dtype)."""
    from tvm.script import tirx as T

    def token(ids, r):
        return T.max(T.min(ids[r], T.int64(n - 1)), T.int64(0))

    (shape0, dtype0), *rest = operand_types
    if not rest:

        @T.prim_func(private=True)
        def rows1(p: T.handle, i: T.handle, o: T.handle):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            count = T.int64()
            P = T.match_buffer(p, shape0, dtype0)
            Ids = T.match_buffer(i, (count,), "int64")
            Out = T.match_buffer(o, (count, k), "float32")
            for r in T.parallel(count):
                for c in range(k):
                    Out[r, c] = element((P,), token(Ids, r), c)

        return rows1.with_attr("op_pattern", OPAQUE)
    ((shape1, dtype1),) = rest

    @T.prim_func(private=True)
    def rows2(p: T.handle, s: T.handle, i: T.handle, o: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        count = T.int64()
        P = T.match_buffer(p, shape0, dtype0)
        S = T.match_buffer(s, shape1, dtype1)
        Ids = T.match_buffer(i, (count,), "int64")
        Out = T.match_buffer(o, (count, k), "float32")
        for r in T.parallel(count):
            for c in range(k):
                Out[r, c] = element((P, S), token(Ids, r), c)

    return rows2.with_attr("op_pattern", OPAQUE)


def _widen(bits16):
    """bf16 bits (in the low 16 bits of an unsigned int) -> fp32."""
    from tvm.script import tirx as T

    return T.reinterpret("float32", T.Cast("uint32", bits16) << T.uint32(16))


RESIDUAL_CHUNK_ROWS = 4096  # table rows converted at a time: a few MB of temporaries


def bf16_residual(table: np.ndarray) -> np.ndarray:
    """``bf16(E - bf16(E))`` as uint16 bits, ``(V, D)`` row-major: what a bf16 head's rounding of
    the tied table ``E`` lost, rounded to bf16 in turn. ``E - bf16(E)`` is exact in fp32."""
    from .amx import bf16_bits, bf16_round

    out = np.empty(table.shape, np.uint16)
    for start in range(0, table.shape[0], RESIDUAL_CHUNK_ROWS):
        rows = np.asarray(table[start:start + RESIDUAL_CHUNK_ROWS], np.float32)
        out[start:start + RESIDUAL_CHUNK_ROWS] = bf16_bits(rows - bf16_round(rows))
    return out


def with_residual(element: Callable) -> Callable:
    """``element`` on the packed operand plus the widened residual ``R[t, c]`` (last operand)."""

    def corrected(ops, t, c):
        *packed, residual = ops
        return element(tuple(packed), t, c) + _widen(residual[t, c])

    return corrected


def amx_bf16_element(ops, t, c):
    """The AMX kernel's panels ``(N/16, K/2, 16, 2)``: ``[p, kk, j, e] = bf16(W[2kk+e, 16p+j])``."""
    (P,) = ops
    return _widen(P[t // 16, c // 2, t % 16, c % 2])


def dpbf16_element(ops, t, c):
    """The AVX512-BF16 kernel's pair panels ``(N/32, K/2, 32)`` uint32: even k in the low half."""
    from tvm.script import tirx as T

    (P,) = ops
    word = P[t // 32, c // 2, t % 32]
    return _widen((word >> T.Cast("uint32", (c % 2) * 16)) & T.uint32(0xFFFF))


def int8_element(lanes: int) -> Callable:
    """int8 panels ``(N/lanes, K/4, 4 lanes)``, ``[p, kk, 4j + e] = Wq[4kk + e, lanes p + j]``, and
    column scales: the code times its column's scale."""
    from tvm.script import tirx as T

    def element(ops, t, c):
        P, S = ops
        return T.Cast("float32", P[t // lanes, c // 4, 4 * (t % lanes) + c % 4]) * S[t]

    return element


__all__ = ["amx_bf16_element", "bf16_residual", "dpbf16_element", "int8_element", "rows_kernel",
           "with_residual"]
