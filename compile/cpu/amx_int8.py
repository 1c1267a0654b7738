"""The dynamically quantized int8 GEMM on Intel AMX tiles (``tdpbssd``), written in TIR.

``C = act(float(s8(A) . s8(W)) * s_a[m] s_w[n] + bias[n]) (+ R)``: the numerics of the VNNI
kernel (int8.py), for a symbolic row count ``m`` and a constant weight packed at build time.

- **s8 x s8.** ``tdpbssd`` multiplies signed bytes by signed bytes, so the activation codes
  ``q_a = rint(A * 127 / max|A[m]|)`` in [-127, 127] go in as they are: no +128 shift and no
  ``128 * sum_k Wq`` compensation. The int32 sums equal the VNNI kernel's after its correction,
  so both kernels produce the same numbers; this one saves the correction's operand and
  subtraction. (``tdpbusd``, u8 x s8, runs at the same rate and would only add them back.)
- **Weights** (``pack_weight``): ``int8.quantize_weight`` at 8 bits (the per-column symmetric
  scales of every int8 build), packed into the VNNI-4 panels ``(N/16, K/4, 64)``: four k's of
  one column side by side, 16 columns, so the B tile of one 64-deep k step is 1 KB of contiguous
  memory. K is zero-padded to whole 64-deep steps and N to whole 32-column blocks.
- **Activations** are quantized per row in a parallel pre-pass (``int8.quantize_rows``, signed)
  into a zero-padded ``(m rounded up to 32, K padded)`` s8 copy.
- **Tiles** (amx_int8_tiles.py): one 32x32 block keeps four int32 C tiles while k runs and
  loads two A and two B tiles per 64-deep step, each feeding two ``tdpbssd`` (16x16x64).
- **Epilogue.** Each block stores its int32 tiles to a 4 KB scratch (one per task, in L1) and
  converts them into C (dequantize, bias, then the layer's GELU or residual add); a block on the
  edge of m or N writes only its real rows and columns.
- **Tasks** are (chunk of up to 4 row blocks, 32-column panel pair), pairs inner, run in groups
  with one ``ldtilecfg`` each, as in amx.py.

``emulate=True`` replaces the tile instructions with TIR loops of the same semantics over the
same buffers and addresses (amx_int8_tiles.py): the integer sums are exact either way, so the
emulated kernel's outputs are the hardware's. The process needs the OS's permission for the
tile state (runtime/amx.py).
"""

from __future__ import annotations

import numpy as np

from .amx import (BLOCK_COLS, BLOCK_ROWS, CHUNK_BLOCKS, group_end, padded, row_blocks, row_chunks, task_group,
                  task_groups)
from .amx_int8_tiles import TILE_K
from .int8 import VNNI, Int8Isa, quantize_rows
from .int8 import pack_weight as pack_vnni_weight

# What an AMX int8 build needs: the tiles, and AVX512-VNNI for the graphs that keep the VNNI
# kernel (decode's one-row tiles, the MoE experts' grouped GEMM). Every AMX CPU has it.
AMX_INT8 = Int8Isa("amx", 16, BLOCK_ROWS, 127, VNNI.cpu_features + ("amx_int8", "amx_tile"),
                   VNNI.llvm_attrs + ("+amx-tile", "+amx-int8"))


def pack_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's weight operands: ``panels (N/16, K/4, 64)`` s8 and ``scales`` (N padded,) fp32.

    ``panels[p, kk, 4 j + e] = Wq[4 kk + e, 16 p + j]``, zero past K and N: the VNNI kernel's
    16-lane panels (its packing, on the weight with K zero-padded to whole 64-deep steps; zero
    rows change no column's scale).
    """
    k, n = weight.shape
    rows = np.zeros((padded(k, TILE_K), n), np.float32)  # (K padded, N)
    rows[:k] = weight
    panels, scales, _ = pack_vnni_weight(rows, VNNI)  # the u8 compensation is not needed
    return panels, scales


def packed_shape(k: int, n: int) -> tuple[int, int, int]:
    return (padded(n, BLOCK_COLS) // 16, padded(k, TILE_K) // 4, 64)


def amx_int8_dense(k: int, n: int, *, residual: bool = False, emulate: bool = False,
                   activation: str | None = None):
    """The PrimFunc ``(A (m, k) f32, W panels, s_w, bias (n,) f32, [R (m, n) f32,] C (m, n) f32)``.

    ``m`` is symbolic; ``activation`` a Relax GELU op name (epilogues.GELU) or None. A matmul
    without a bias passes zeros.
    """
    from tvm.script import tirx as T

    from .amx_int8_tiles import int8_tile_ops
    from .epilogues import GELU

    k_pad, n_pad = padded(k, TILE_K), padded(n, BLOCK_COLS)
    pairs = n_pad // BLOCK_COLS
    ops = int8_tile_ops(emulate)
    w_shape = packed_shape(k, n)

    def value(bits, Sa, Sw, Bias, R, row, col):
        # as int8.py's epilogue; resolved as the kernel is built: only the layer's own epilogue
        out = T.Cast("float32", T.reinterpret("int32", bits)) * (Sa[row] * Sw[col]) + Bias[col]
        out = GELU[activation](out) if activation else out
        return out + R[row, col] if residual else out

    @T.macro
    def from_scratch(C, Sa, Sw, Bias, R, scratch, row0, col0, m):
        # Through a contiguous scratch, as amx.py: stored straight into C, a block's rows sit
        # N * 4 bytes apart and share one or two L1 sets at N = 512, 1024, ...
        if row0 + BLOCK_ROWS <= m and col0 + BLOCK_COLS <= n:
            for r in range(BLOCK_ROWS):
                for j in T.vectorized(BLOCK_COLS):
                    C[row0 + r, col0 + j] = value(scratch[r, j], Sa, Sw, Bias, R, row0 + r, col0 + j)
        else:
            for r in range(BLOCK_ROWS):  # an edge block: only its real rows and columns
                if row0 + r < m:
                    for j in range(BLOCK_COLS):
                        if col0 + j < n:
                            C[row0 + r, col0 + j] = value(scratch[r, j], Sa, Sw, Bias, R, row0 + r, col0 + j)

    @T.macro
    def block(Aq, W, Sa, Sw, Bias, R, C, scratch, b, pair, m):
        # No let-bound names in the task body (heap allocations per parallel iteration).
        ops.block(Aq, W, scratch, 0, 0, BLOCK_COLS, b * BLOCK_ROWS, pair * 2, k_pad)
        from_scratch(C, Sa, Sw, Bias, R, scratch, b * BLOCK_ROWS, pair * BLOCK_COLS, m)

    def tasks(m):  # (chunk of row blocks, panel pair)
        return row_chunks(m) * pairs

    @T.macro
    def body(A, W, Sw, Bias, R, C, m):
        # Sizes in terms of the parameters (FlattenBuffer wants them so), not let-bound.
        Aq = T.decl_buffer((row_blocks(m) * BLOCK_ROWS, k_pad), "int8")  # (m padded, K padded) s8 codes
        Sa = T.decl_buffer((row_blocks(m) * BLOCK_ROWS,), "float32")  # row scales, 0 on padding rows
        quantize_rows(k, k_pad, row_blocks(m) * BLOCK_ROWS, signed=True)(A, Aq, Sa, m)
        cfg = T.decl_buffer((64,), "uint8")  # filled once, read by every group's ldtilecfg
        ops.fill_config(cfg)
        # tasks as in amx.py, in groups that load the tile configuration once
        for group in T.parallel(task_groups(tasks(m))):
            scratch = T.decl_buffer((BLOCK_ROWS, BLOCK_COLS), "float32", scope="local")  # int32 bits
            ops.load_config(cfg)
            for task in range(group * task_group(tasks(m)), group_end(group, tasks(m))):
                for inner in range(CHUNK_BLOCKS):
                    if task // pairs * CHUNK_BLOCKS + inner < row_blocks(m):
                        block(Aq, W, Sa, Sw, Bias, R, C, scratch, task // pairs * CHUNK_BLOCKS + inner,
                              task % pairs, m)
            ops.release()

    @T.prim_func(private=True)
    def dense(a: T.handle, w: T.handle, sw: T.handle, b: T.handle, c: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()
        A = T.match_buffer(a, (m, k), "float32")
        W = T.match_buffer(w, w_shape, "int8")
        Sw = T.match_buffer(sw, (n_pad,), "float32")
        Bias = T.match_buffer(b, (n,), "float32")
        C = T.match_buffer(c, (m, n), "float32")
        body(A, W, Sw, Bias, C, C, m)  # R unused without a residual

    @T.prim_func(private=True)
    def dense_residual(a: T.handle, w: T.handle, sw: T.handle, b: T.handle, r: T.handle, c: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()
        A = T.match_buffer(a, (m, k), "float32")
        W = T.match_buffer(w, w_shape, "int8")
        Sw = T.match_buffer(sw, (n_pad,), "float32")
        Bias = T.match_buffer(b, (n,), "float32")
        R = T.match_buffer(r, (m, n), "float32")
        C = T.match_buffer(c, (m, n), "float32")
        body(A, W, Sw, Bias, R, C, m)

    return dense_residual if residual else dense


__all__ = ["AMX_INT8", "amx_int8_dense", "pack_weight", "packed_shape"]
