"""A default CPU schedule for matmul kernels (and their fused epilogues), without tuning.

After legalization and fusion, every Relax matmul is a PrimFunc with one reduction block
``C[batch.., m.., n] += A[batch.., m.., k] * B[batch.., k, n]`` plus injective producers
(transposes) and consumers (bias, GELU, residual add, scale). This rule gives it the classic
register-blocked CPU GEMM schedule:

- The block is re-laid as ``C[S, I, J] += A[S, I, K] * B[S, J, K]`` (dlight's GEMM analysis):
  *S* axes index both operands (heads, experts), *I* axes only the left one (batch, sequence,
  MoE groups) and are fused into one M, *J* is the column N. MoE's dispatched expert block
  ``(E, G*k, K) @ (E, K, N)`` (define/moe.py) thus becomes E GEMMs of ``(G*k, K) x (K, N)``,
  each over only the tokens that expert took, with the stacked weights packed at build time.
- M is padded to whole tiles of ``tile_rows`` rows (a zero-padded copy of A, one pass) and N to
  whole tiles of ``COLS_VECTORS`` SIMD vectors, so the inner loop carries no predicate (a
  predicate there made LLVM keep the accumulators in memory: 3-4x slower).
- Each tile's ``rows x cols`` accumulators stay in registers while k runs (14 zmm registers on
  AVX-512: 7 rows x 32 columns, the most that fits TVM's 1 KiB stack-allocation limit; see
  ``ACCUMULATOR_BYTES``); the N part is vectorized and the M part unrolled.
- Tiles run in parallel on TVM's thread pool over (column-panel block, row tile): a block of up
  to ``PANELS_PER_BLOCK`` column panels of B stays in L2 while one row tile of A (in L1) sweeps
  it, so each weight is read from memory once and each output row is written in runs.
- B is re-laid as contiguous ``(N/cols, K, cols)`` panels. For constant weights this happens
  once at build time (weights.py); other right operands (attention's K and V) are re-laid
  per call, one pass over them.
- The epilogue is inlined into the tile's write-back, so bias/GELU/residual cost no extra pass
  over memory and no separate kernel.

Measured on the 2-core benchmark machine (AMD EPYC, znver4, AVX-512), one thread, CPU time:
128x256x1024 with bias ~112 GFLOP/s (ONNX Runtime's MLAS ~111), the 128x256x8000 LM head ~99
(MLAS ~89). Before the accumulators fitted the stack, the symbolic-shape build stored every
accumulator after each FMA and ran these at ~43.
"""

from __future__ import annotations

from .rules import cpu_rule

COLS_VECTORS = 2  # SIMD vectors per tile row
# A KV-cache decode step multiplies one row per sequence (M = batch): a 7-row tile would pad a
# batch-1 step to 7x the FLOPs, so decode graphs use single-row tiles (a GEMV per row).
DECODE_ROWS = 1
# Column panels per block: 16 x K x 32 floats of B (512 KiB at K=256) stay in L2 while every row
# tile of A passes over them. The 128x256x8000 LM head: 5.9 ms with blocks, 6.3 without (p50
# CPU time, one thread, znver4).
PANELS_PER_BLOCK = 16


# TVM keeps a kernel's scratch buffer on the stack only when it is under 1 KiB
# (``kMaxStackAlloca``) and in "global" scope; anything else becomes a heap workspace, once per
# tile. A heap accumulator may alias the other heap buffers (A's zero-padded copy, attention's
# per-call packed B), so LLVM stored all accumulators back to memory after every FMA: the
# dynamic-shape GEMMs ran at ~43 GFLOP/s per core instead of ~112 (128x256x1024, znver4).
ACCUMULATOR_BYTES = 1024


def tile_rows(lanes: int, rows_extent=None) -> int:
    """Output rows per register tile: the ``rows x COLS_VECTORS`` fp32 accumulators must stay
    under ``ACCUMULATOR_BYTES`` so they live in registers (7 rows of 32 on AVX-512: 14 zmm
    accumulators, 6 rows of 16 on AVX2). A static M (a tuning bucket) takes the height with the
    least work, ``tiles x (rows + 1)``: each k step of a tile costs its rows' FMAs plus about one
    row's worth of loading B, so short tiles pay more per row. Taking the largest height that
    divides M instead, as before, gave M = 128 and 1024 4-row tiles, and every GEMM of the
    static bucket builds ran 8-15% slower than the padded 7-row tiles of the dynamic build
    (bert-small 8x128, znver5): a zero-padded copy of A costs far less than that.
    """
    from tvm import tirx

    registers = 32 if lanes >= 16 else 16  # AVX-512 has 32 vector registers, AVX2/NEON 16
    by_registers = (registers - COLS_VECTORS - 1) // COLS_VECTORS  # + B's vectors + A's scalar
    widest = min(by_registers, (ACCUMULATOR_BYTES - 1) // (4 * lanes * COLS_VECTORS))
    if isinstance(rows_extent, tirx.IntImm):
        m = int(rows_extent)
        return min(range(widest, 0, -1), key=lambda rows: -(-m // rows) * (rows + 1))  # ties: the taller
    return widest


def _cols_tile(col_extent, lanes: int) -> int:
    """N tile: ``COLS_VECTORS`` SIMD vectors, shrunk to one that divides a static N (no tail)."""
    from tvm import tirx

    tile = lanes * COLS_VECTORS
    if isinstance(col_extent, tirx.IntImm):
        while tile > lanes and int(col_extent) % tile:
            tile //= 2
    return tile


def schedule_matmul(sch, infos, lanes: int, *, rows: int | None = None) -> bool:
    """Schedule the one matmul among ``infos`` (after inlining); False when the shape is not one.

    ``rows`` fixes the register tile's height; by default ``tile_rows`` picks it.
    """
    from tvm.s_tir.dlight.gpu.matmul import get_index_map

    reductions = [i for i in infos if i.is_reduction()]
    epilogues = [i for i in infos if not i.is_reduction()]
    if len(reductions) != 1 or len(epilogues) > 1:
        return False
    main = reductions[0].block_rv
    maps = get_index_map(sch.get(main))
    if maps is None:
        return False  # not C[S, I, J] += A[S, I, K] * B[S, J, K]
    block_map, a_map, b_map, c_map = maps
    weight = _weight_read(sch, main)  # before reindexing renames the reads
    # Re-lay the block as (S, I, J, K) with every row axis fused into I, and each operand as a
    # copy in that layout (dlight's GPU matmul does the same): the tile's write-back region is
    # then exactly its own rows, MoE's groups join the GEMM's M, and padding I and J to whole
    # tiles leaves no predicate in the inner loop (a predicate there spills the accumulators).
    lhs = sch.reindex(main, ("read", 0))
    rhs = sch.reindex(main, ("read", 1))
    write_back = sch.reindex(main, ("write", 0))
    sch.transform_layout(lhs, ("write", 0), a_map)
    sch.transform_layout(rhs, ("write", 0), b_map)
    sch.transform_layout(write_back, ("read", 0), c_map)
    sch.transform_block_layout(main, block_map)
    cols = _cols_tile(sch.get(sch.get_loops(main)[2]).extent, lanes)
    rows = rows or tile_rows(lanes, sch.get(sch.get_loops(main)[1]).extent)
    sch.pad_einsum(main, [1, rows, cols, 1])
    sch.compute_inline(lhs)  # into the zero-padded copy of A (or into the block itself)
    padded_rhs = _producer_of(sch, main, 1)
    if not sch.get(padded_rhs).same_as(sch.get(rhs)):  # N was padded: B has a padded copy too
        sch.compute_inline(rhs)
        rhs = padded_rhs
    _pack_rhs(sch, rhs, cols, weight)
    for epilogue in epilogues:  # bias, GELU, residual: applied as the tile is written out
        sch.reverse_compute_inline(epilogue.block_rv)
    sch.transform_block_layout(write_back, c_map)
    unpad = sch.get_consumers(main)[0]
    if not sch.get(unpad).same_as(sch.get(write_back)):
        sch.reverse_compute_inline(write_back)
    # The accumulators stay a "global"-scope tile buffer: TVM puts a small one on the stack,
    # which LLVM promotes to registers once the tile is unrolled ("local" would go to the heap).
    for block in sch.get_producers(main):
        if not sch.get(block).annotations.get("meta_schedule.layout_rewrite_preproc"):
            _parallel_copy(sch, block)
    _tile(sch, main, unpad, rows, cols, lanes, stacked_weights=weight)
    return True


def _producer_of(sch, block, read_index: int):
    source = sch.get(block).reads[read_index].source
    return next(p for p in sch.get_producers(block)
                if any(w.source.same_as(source) for w in sch.get(p).writes))


def _pack_rhs(sch, rhs, cols: int, weight: bool) -> None:
    """Store B as contiguous (S, N/cols, K, cols) panels: a tile then streams one panel.

    The tile reads a (K, cols) panel of B for every k; in a (K, N) weight layout that is one
    cache line per k at a stride of N floats, which defeats the prefetcher and the TLB for wide
    N (gpt's 8000-word LM head ran at ~40 GFLOP/s). For a constant weight the copy is marked as
    a layout-rewrite preprocess: ``SplitLayoutRewritePreproc`` + ``FoldConstant`` run it once
    at build time on the embedded weights. Other operands (attention's K and V) are re-laid
    per call, which costs one pass over them.
    """
    from tvm.tirx import IndexMap

    sch.transform_layout(rhs, ("write", 0), IndexMap.from_func(
        lambda s, j, k: [s, j // cols, k, j % cols]))
    if weight:
        sch.annotate(rhs, "meta_schedule.layout_rewrite_preproc", True)


def _parallel_copy(sch, block) -> None:
    """Operand copies (padding A, re-laying B) run once per call: spread rows over the threads."""
    loops = sch.get_loops(block)
    if len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]))


def _weight_read(sch, main) -> bool:
    """Whether the right operand is a layout-free weight (a constant the build may re-lay)."""
    func = sch.mod["main"]
    free = set(int(i) for i in (func.attrs or {}).get("layout_free_buffers", []))
    params = list(func.params)
    rhs = sch.get(main).reads[1].source
    return rhs in params and params.index(rhs) in free


def _panels_per_block(panels_extent) -> int:
    """Column panels per L2 block: the largest divisor of a static panel count up to
    ``PANELS_PER_BLOCK`` (a symbolic N, attention's sequence, keeps one panel per block)."""
    from tvm import tirx

    if not isinstance(panels_extent, tirx.IntImm):
        return 1
    panels = int(panels_extent)
    return max(p for p in range(1, min(panels, PANELS_PER_BLOCK) + 1) if panels % p == 0)


def _static(extent) -> bool:
    from tvm import tirx

    return isinstance(extent, (int, tirx.IntImm))


def _static_one(extent) -> bool:
    return _static(extent) and int(extent) == 1


def _tile(sch, main, write_back, rows_tile: int, cols_tile: int, lanes: int, *, stacked_weights: bool) -> None:
    batch, rows, cols, k = sch.get_loops(main)
    m_outer, m_inner = sch.split(rows, factors=[None, rows_tile])
    n_outer, n_inner = sch.split(cols, factors=[None, cols_tile])
    block = _panels_per_block(sch.get(n_outer).extent)
    n_block, n_panel = sch.split(n_outer, factors=[None, block])
    # A block of column panels (block x K x cols of B: a few hundred KB, L2-resident) is read
    # once from memory and reused by every row tile; within it, one row tile of A stays in L1
    # while it sweeps the block's panels, writing a contiguous run of each output row.
    sch.reorder(n_block, m_outer, n_panel, k, m_inner, n_inner)
    if stacked_weights and not _static_one(sch.get(batch).extent) and not _static(sch.get(m_outer).extent):
        # MoE's experts (a stack of weights, a symbolic M): fused with the symbolic row tiles,
        # each tile's expert index is a division by a runtime size, and TVM kept the
        # accumulators as one whole (E, M, N) heap buffer instead of a register tile (the
        # experts ran at ~30 GFLOP/s). The expert loop stays outside. Attention's heads keep
        # the fused loop: it measured faster there.
        sch.parallel(sch.fuse(n_block, m_outer))
    else:
        sch.parallel(sch.fuse(batch, n_block, m_outer))
    sch.reverse_compute_at(write_back, n_panel)
    _vectorize_tile(sch, m_inner, n_inner, lanes)
    sch.decompose_reduction(main, k)
    *_, wb_rows, wb_cols = sch.get_loops(write_back)
    if rows_tile > 1:  # a one-row tile's write-back has no row loop left
        sch.unroll(wb_rows)  # constant indices into the accumulators: they can stay in registers
    sch.vectorize(wb_cols)


def _vectorize_tile(sch, m_inner, n_inner, lanes: int) -> None:
    n_vectors, n_lanes = sch.split(n_inner, factors=[None, lanes])
    sch.unroll(m_inner)
    sch.unroll(n_vectors)
    sch.vectorize(n_lanes)


def matmul_rule(rows: int | None = None):
    """The dlight rule; ``rows`` fixes the tile height (``DECODE_ROWS`` for graphs whose matmuls
    see one row per sequence)."""
    from tvm.s_tir.dlight.base import try_inline

    def schedule(sch, infos, lanes: int) -> bool:
        if sum(i.is_reduction() for i in infos) != 1:
            return False
        return schedule_matmul(sch, try_inline(sch, infos), lanes, rows=rows)

    return cpu_rule("CpuMatmul", schedule)


__all__ = ["DECODE_ROWS", "matmul_rule", "schedule_matmul"]
