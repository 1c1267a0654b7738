"""A bf16 GEMM on Intel AMX tiles, written in TIR: ``C = A @ W (+ bias)``, fp32 in and out.

The kernel computes ``C[m, N] = bf16(A)[m, K] . bf16(W)[K, N]`` with fp32 accumulation, for a
symbolic row count ``m`` (batch x sequence) and a constant weight packed once at build time:

- **Tiles.** AMX has 8 tile registers of 16 rows x 64 bytes. One block of 32x32 outputs keeps
  four fp32 C tiles (0-3) while k runs, and loads two A tiles (4-5: 16 rows x 32 bf16) and two B
  tiles (6-7: 16 k-pairs x 16 columns x 2) per 32-deep k step: each tile load feeds two
  ``tdpbf16ps`` (16x16x32 multiply-adds each).
- **Weights** (``pack_weight``) are bf16 bits in VNNI pair panels ``(N/16, K/2, 16, 2)``: the B
  tile of one k step is 1 KB of contiguous memory. K is zero-padded to whole 32-deep steps and N
  to whole 32-column blocks, so padding adds nothing to the sums.
- **Activations** are rounded to bf16 (round to nearest even) in a parallel pre-pass into a
  zero-padded ``(m rounded up to 32, K padded)`` copy; the rows past ``m`` are zeros.
- **Edges and epilogue.** A 32x32 block stores its tiles to a contiguous 4 KB scratch (one per
  task, in L1), and the epilogue writes it into C with the bias (and residual, or GELU: an FFN's
  first layer) added. A block on the edge of m or N copies only its real rows and columns, so any
  m, K and N work.
- **Tasks and configuration.** A task is up to 128 rows (4 blocks) of one 32-column panel pair,
  pairs inner so that a thread keeps its rows of A in L2. Consecutive tasks run in groups of
  ``max(1, tasks // GROUPS)``, each group one parallel iteration; ``ldtilecfg`` runs once per
  group and ``tilerelease`` at its end: the tile state is per thread.

``emulate=True`` builds the same kernel with the six tile instructions replaced by TIR loops over
local "tile registers" with AMX's semantics (pairs of bf16 products summed in fp32). It shares
every address, stride and loop of the AMX kernel, so it checks the kernel's indexing, packing and
edge handling on hosts without AMX; it is slow and for tests only.

The process must hold the OS's permission for the tile state before the first AMX instruction
(runtime/amx.py); without it the kernel dies with SIGILL.
"""

from __future__ import annotations

import numpy as np

TILE_ROWS = 16  # rows of every tile
TILE_K = 32  # bf16 values in one 64-byte tile row of A: the depth of one tdpbf16ps
TILE_COLS = 16  # fp32 columns of one C tile (64 bytes)
BLOCK_ROWS = 2 * TILE_ROWS  # a 2x2 block of C tiles
BLOCK_COLS = 2 * TILE_COLS
# Row blocks per parallel task: 128 rows of bf16 A, 256 KB at K=1024, stay in L2 while the task's
# thread walks the column panels (at M=128 every task sees all of A, as with no chunking).
CHUNK_BLOCKS = 4
# Tasks run in groups of max(1, tasks // GROUPS), each loading the tile configuration once:
# ldtilecfg per task cost the LM head (250 tasks at 128x256x8000) 10% and a 1024x256x1024 layer 7%.
GROUPS = 16
AMX_CPU_FEATURES = ("amx_bf16", "amx_tile")  # /proc/cpuinfo spelling
AMX_LLVM_ATTRS = ("+amx-tile", "+amx-bf16")


def padded(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


BF16_CHUNK = 1 << 20  # values converted at a time: the uint64 arithmetic needs 8 bytes per value


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bit patterns (uint16), rounding to nearest even as the kernel's pre-pass does.

    In chunks, so that a large weight (an LM head) does not need several uint64 copies of itself.
    """
    source = np.ascontiguousarray(values, dtype=np.float32)
    flat = source.reshape(-1).view(np.uint32)
    out = np.empty(flat.shape, np.uint16)
    for start in range(0, flat.size, BF16_CHUNK):
        bits = flat[start:start + BF16_CHUNK].astype(np.uint64)
        out[start:start + BF16_CHUNK] = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return out.reshape(source.shape)


def bf16_round(values: np.ndarray) -> np.ndarray:
    """fp32 values rounded to the nearest bf16, as fp32 (the kernel's inputs, for references)."""
    return (bf16_bits(values).astype(np.uint32) << 16).view(np.float32)


def pack_weight(weight: np.ndarray) -> np.ndarray:
    """A (K, N) fp32 weight as the kernel's bf16 VNNI panels ``(N/16, K/2, 16, 2)`` (uint16).

    ``packed[p, kk, j, e] = bf16(weight[2 kk + e, 16 p + j])``, zero past K and N.
    """
    k, n = weight.shape
    k_pad, n_pad = padded(k, TILE_K), padded(n, BLOCK_COLS)
    full = np.zeros((k_pad, n_pad), np.uint16)
    full[:k, :n] = bf16_bits(weight)
    # (K/2, 2, N/16, 16) -> (N/16, K/2, 16, 2)
    return np.ascontiguousarray(full.reshape(k_pad // 2, 2, n_pad // 16, 16).transpose(2, 0, 3, 1))


def packed_shape(k: int, n: int) -> tuple[int, int, int, int]:
    return (padded(n, BLOCK_COLS) // TILE_COLS, padded(k, TILE_K) // 2, TILE_COLS, 2)


def row_blocks(rows):
    """Blocks of 32 rows that cover ``rows`` (a PrimExpr)."""
    return (rows + BLOCK_ROWS - 1) // BLOCK_ROWS


def task_group(tasks):
    """Tasks per parallel group (one ``ldtilecfg``) for ``tasks`` tasks (a PrimExpr)."""
    from tvm.script import tirx as T

    return T.max(T.int64(1), tasks // GROUPS)


def task_groups(tasks):
    """Parallel groups that cover ``tasks`` tasks."""
    return (tasks + task_group(tasks) - 1) // task_group(tasks)


def group_end(group, tasks):
    """One past the last task of ``group`` (the last group may be partial)."""
    from tvm.script import tirx as T

    return T.min((group + 1) * task_group(tasks), tasks)


def row_chunks(rows):
    """Chunks of CHUNK_BLOCKS row blocks that cover ``rows``."""
    return (row_blocks(rows) + CHUNK_BLOCKS - 1) // CHUNK_BLOCKS


def amx_dense(k: int, n: int, *, residual: bool = False, emulate: bool = False,
              activation: str | None = None):
    """The PrimFunc ``(A (m, k) f32, W packed, bias (n,) f32, [R (m, n) f32,] C (m, n) f32)``.

    ``m`` is symbolic. ``C = act(A @ W + bias) (+ R)``: with ``residual`` the write-back also adds
    R (a transformer block's skip connection), saving a separate pass over the output; ``act`` is
    the Relax GELU op named by ``activation`` (epilogues.GELU: the FFN's GELU, as the fp32 GEMM
    schedule fuses it) or none. A matmul without a bias passes zeros: 4 bytes a column, and one
    kernel shape.
    """
    from tvm.script import tirx as T

    from .amx_tiles import tile_ops, to_bf16
    from .epilogues import GELU

    k_pad, n_pad = padded(k, TILE_K), padded(n, BLOCK_COLS)
    pairs = n_pad // BLOCK_COLS
    ops = tile_ops(emulate)
    w_shape = packed_shape(k, n)

    def _epilogue(value, bias, res, row, col):
        value = value + bias[col]
        value = GELU[activation](value) if activation else value
        return value + res[row, col] if residual else value  # resolved as the kernel is built

    @T.macro
    def _from_scratch(C, Bias, R, scratch, row0, col0, m):
        # The tiles were stored to a contiguous scratch in L1; the epilogue writes each output
        # row once. Stored straight into C, a block's 32 rows sit N * 4 bytes apart, which at
        # N = 512, 1024, ... maps them all to one or two L1 sets, and the epilogue then reads
        # them back from L2 (a 128x256x1024 layer runs 26% faster through the scratch).
        if row0 + BLOCK_ROWS <= m and col0 + BLOCK_COLS <= n:
            for r in range(BLOCK_ROWS):
                for j in T.vectorized(BLOCK_COLS):
                    C[row0 + r, col0 + j] = _epilogue(scratch[r, j], Bias, R, row0 + r, col0 + j)
        else:
            for r in range(BLOCK_ROWS):  # an edge block: only its real rows and columns
                if row0 + r < m:
                    for j in range(BLOCK_COLS):
                        if col0 + j < n:
                            C[row0 + r, col0 + j] = _epilogue(scratch[r, j], Bias, R, row0 + r, col0 + j)

    @T.macro
    def _block(Abf, W, Bias, R, C, scratch, block, pair, m):
        # No let-bound names (row0 = ...) in the task body: TVM gives each one a heap allocation
        # per parallel iteration.
        ops.block(Abf, W, scratch, 0, 0, BLOCK_COLS, block * BLOCK_ROWS, pair * 2, k_pad)
        _from_scratch(C, Bias, R, scratch, block * BLOCK_ROWS, pair * BLOCK_COLS, m)

    def tasks(m):  # (chunk of row blocks, panel pair)
        return row_chunks(m) * pairs

    @T.macro
    def _body(A, W, Bias, R, C, m):
        # (m rounded up to 32, K padded) bf16 bits; not a let-bound size: FlattenBuffer wants the
        # allocation's shape in terms of the parameters
        Abf = T.decl_buffer((row_blocks(m) * BLOCK_ROWS, k_pad), "uint16")
        for i in T.parallel(row_blocks(m) * BLOCK_ROWS):  # A rounded to bf16, zero-padded
            for kc in range(k_pad // 16):
                for kv in T.vectorized(16):
                    Abf[i, kc * 16 + kv] = T.if_then_else(
                        i < m and kc * 16 + kv < k,
                        to_bf16(A[T.min(i, m - 1), T.min(kc * 16 + kv, k - 1)]), T.uint16(0))
        # One task per (chunk of CHUNK_BLOCKS row blocks, 32-column panel pair), pairs inner: a
        # thread's consecutive tasks reuse one chunk of A from L2 while B's panels stream past.
        cfg = T.decl_buffer((64,), "uint8")  # filled once, read by every group's ldtilecfg
        ops.fill_config(cfg)
        for group in T.parallel(task_groups(tasks(m))):
            scratch = T.decl_buffer((BLOCK_ROWS, BLOCK_COLS), "float32", scope="local")  # 4 KB, per group
            ops.load_config(cfg)
            for task in range(group * task_group(tasks(m)), group_end(group, tasks(m))):
                for inner in range(CHUNK_BLOCKS):
                    if task // pairs * CHUNK_BLOCKS + inner < row_blocks(m):
                        _block(Abf, W, Bias, R, C, scratch, task // pairs * CHUNK_BLOCKS + inner, task % pairs, m)
            ops.release()

    @T.prim_func(private=True)
    def dense(a: T.handle, w: T.handle, b: T.handle, c: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()
        A = T.match_buffer(a, (m, k), "float32")
        W = T.match_buffer(w, w_shape, "uint16")
        Bias = T.match_buffer(b, (n,), "float32")
        C = T.match_buffer(c, (m, n), "float32")
        _body(A, W, Bias, C, C, m)  # R unused without a residual

    @T.prim_func(private=True)
    def dense_residual(a: T.handle, w: T.handle, b: T.handle, r: T.handle, c: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()
        A = T.match_buffer(a, (m, k), "float32")
        W = T.match_buffer(w, w_shape, "uint16")
        Bias = T.match_buffer(b, (n,), "float32")
        R = T.match_buffer(r, (m, n), "float32")
        C = T.match_buffer(c, (m, n), "float32")
        _body(A, W, Bias, R, C, m)

    return dense_residual if residual else dense


__all__ = ["AMX_CPU_FEATURES", "AMX_LLVM_ATTRS", "amx_dense", "bf16_bits", "bf16_round",
           "pack_weight", "packed_shape", "padded", "row_blocks", "row_chunks", "group_end",
           "task_group", "task_groups"]
