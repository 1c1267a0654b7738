"""Embedding rows read from the LM head's packed weight: a tied table stored once per build.

GPT-2-style models tie the token embedding ``E (V, D)`` to the LM head, ``logits = h @ E^T``.
A reduced-precision build packs ``E^T`` for its dense kernel (bf16 panels, or int8 panels and
column scales); without this, the embedding lookup ``take(E, ids)`` would also keep ``E`` in
fp32, which for GPT-2 base is 154 MB beside a 77 MB bf16 or 39 MB int8 head. Here the lookup
reads row ``t`` of ``E`` back out of the head's packed operands instead: column ``t`` of the
packed ``(D, V)`` weight, converted to fp32 (bf16 bits widened; int8 codes times the column's
scale). A tied table is then stored once, at the build's precision, as llama.cpp's row lookup
reads quantized tables and ONNX Runtime's ``quantize_dynamic`` quantizes the Gather's table.

The rows are what the head multiplies by: the embedding takes the precision's rounding (bf16:
8 significant bits; int8: 1/254 of the row's largest magnitude), inside the precision's
tolerance like every other reduced-precision weight. Ids are clamped to the table, as the
runtime refuses ids out of range before a call (runtime/validate.py).

Each reader is one PrimFunc ``(operands..., ids (count,) int64, out (count, D) f32)``, ``count``
symbolic; rows run in parallel and each reads its ``D`` values with the panel stride (one cache
line per value at worst: 98 K lines for 128 tokens of GPT-2's 768 columns, about what the
dense kernels read per layer).
"""

from __future__ import annotations

from collections.abc import Callable

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


__all__ = ["amx_bf16_element", "dpbf16_element", "int8_element", "rows_kernel"]
