"""Default CPU schedule rules for the kernels that are not matmuls.

``row_reduction_rule``: softmax, layer norm and other kernels that reduce the last axis of
each row: rows in parallel, every stage of a row computed together.
``fallback_rule``: everything else (transposes, slices, elementwise tails): parallel outer axes,
the innermost axis vectorized when its extent is whole SIMD vectors.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

_FALLBACK_VECTOR_BITS = 128  # SSE width: what every x86-64 and aarch64 target has


def vector_lanes(target) -> int:
    """fp32 lanes of the target's widest SIMD register: 16 with AVX-512, 8 with AVX/AVX2, else 4.

    Read from the ISA extensions LLVM enables for the target's ``mcpu``, not from TVM's
    ``llvm_get_vector_width``: in apache-tvm 0.27 that answers 512 for every x86 ``mcpu``
    (znver3, haswell, plain x86-64 alike). On an AVX2 host the GEMM schedule then built 7 x 32
    tiles, 28 ymm accumulators for 16 registers, which spilled after every FMA: 128x256x1024
    ran at ~50 GFLOP/s on two Zen 3 cores, a quarter of their FMA peak.
    """
    from tvm.target.codegen import llvm_get_cpu_features

    try:
        features = set(str(f) for f in llvm_get_cpu_features(target))
    except Exception:  # noqa: BLE001 - LLVM may not know a cross target's features
        features = set()
    if "avx512f" in features:
        bits = 512
    elif "avx" in features:
        bits = 256
    else:
        bits = _FALLBACK_VECTOR_BITS  # SSE, NEON (SVE's width is not known at compile time)
    return bits // 32


def holds_bools(sch, block) -> bool:
    """Whether a block reads or writes a bool buffer: such a stage must stay scalar.

    TVM stores bools as int8 but computes comparisons as i1, and its vectorized LLVM codegen
    then emits ``and <16 x i8>, <16 x i1>``, which fails LLVM's verifier (token choice's rank
    kernel, ``x == y & earlier`` with a constant bool matrix, at 16 experts on AVX-512).
    """
    stmt = sch.get(block)
    return any(region.source.dtype == "bool" for region in [*stmt.reads, *stmt.writes])


def cpu_rule(name: str, schedule):
    """A dlight rule from ``schedule(sch, infos, lanes) -> bool`` (False: not this rule's kernel).

    The rule takes llvm targets only, normalizes the PrimFunc into dlight's block infos, and
    treats a schedule error as "not mine", so the next rule in ``ApplyDefaultSchedule`` (or, past
    the last one, TVM's unscheduled loops) takes the kernel.
    """
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import ScheduleRule

    class _CpuRule(ScheduleRule):
        def apply(self, func, target, _tunable):
            if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
                return None
            sch = s_tir.Schedule(func)
            infos = normalize_prim_func(sch)
            if infos is None:
                return None
            try:
                taken = schedule(sch, infos, vector_lanes(target))
            except Exception as exc:  # noqa: BLE001 - the rule claimed the kernel, then failed
                # A warning, not debug: if no later rule takes it, this kernel runs unscheduled
                # (~100x slower), and pipeline.py records it in the build as such.
                logger.warning("the %s schedule failed on %s (%s); the next rule gets it",
                               name, func.attrs.get("global_symbol", "a kernel") if func.attrs else "a kernel",
                               str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__)
                return None
            return sch if taken else None

    _CpuRule.__name__ = name
    return _CpuRule()


def fallback_rule():
    """A dlight rule for CPU kernels no other rule takes: parallel outer, vector inner."""

    def schedule(sch, infos, lanes: int) -> bool:
        from tvm.s_tir.dlight.base import try_inline

        for info in try_inline(sch, infos):
            _schedule_block(sch, info, lanes)
        return True

    return cpu_rule("ParallelFallback", schedule)


def _schedule_block(sch, info, lanes: int) -> None:
    block = info.block_rv
    loops = sch.get_loops(block)
    if not loops:
        return
    by_kind: dict[str, list] = {"S": [], "R": [], "O": []}
    for loop, kind in zip(loops, info.dom_kind()):
        by_kind[kind].append(loop)
    spatial, reduce = by_kind["S"], by_kind["R"] + by_kind["O"]
    if not spatial:
        return  # a full reduction to a scalar: nothing to split safely across threads
    if reduce and _lanes_outside_reduction(sch, block, spatial, reduce, lanes):
        return
    sch.reorder(*spatial, *reduce)
    if reduce:
        sch.parallel(sch.fuse(*spatial))  # rows in parallel; each reduction stays sequential
        return
    _parallel_vectorized(sch, spatial, 1 if holds_bools(sch, block) else lanes)


def _lanes_outside_reduction(sch, block, spatial, reduce, lanes: int) -> bool:
    """A reduction over a non-last axis with a static last axis of whole vectors: the reduction
    runs inside the last axis' outer loop, one vector of partial results per step (expert
    choice's token rank sums (G, n, n, E) over the middle axis; reduction innermost, it ran
    scalar)."""
    from tvm import tirx

    *outer, last = spatial
    extent = sch.get(last).extent
    if not isinstance(extent, tirx.IntImm) or int(extent) % lanes or holds_bools(sch, block):
        return False
    last_outer, lane = sch.split(last, factors=[None, lanes])
    sch.reorder(*outer, last_outer, *reduce, lane)
    sch.parallel(sch.fuse(*outer, last_outer) if outer else last_outer)
    init = sch.decompose_reduction(block, reduce[0])
    sch.vectorize(sch.get_loops(init)[-1])
    # TVM refuses to vectorize a loop of the update block ("reduction block vars are not used
    # to index the output buffers"); innermost with a static extent, LLVM vectorizes it: the
    # (8, 128, 128, 32) rank sum took 0.31 ms instead of 4.9 (znver5, 2 threads).
    return True


def _parallel_vectorized(sch, spatial, lanes: int) -> None:
    """Vectorize the innermost axis alone when its extent is static and whole vectors.

    Fusing it with symbolic outer axes first (batch, seq) would make every lane's index a
    division by a runtime size, which LLVM scalarizes: a (1, 128, 4, 64) attention transpose
    took 0.22 ms that way. A symbolic innermost axis stays a plain loop.
    """
    from tvm import tirx

    *outer, last = spatial
    extent = sch.get(last).extent
    if lanes == 1:  # a scalar stage (bools): rows in parallel, nothing vectorized
        sch.parallel(sch.fuse(*spatial) if len(spatial) > 1 else spatial[0])
        return
    whole_vectors = isinstance(extent, tirx.IntImm) and int(extent) % lanes == 0
    if not whole_vectors and not outer:
        outer_loop, inner = sch.split(last, factors=[None, lanes])
        sch.parallel(outer_loop)
        sch.vectorize(inner)
        return
    if whole_vectors:
        last, inner = sch.split(last, factors=[None, lanes])
        outer = [*outer, last]
        sch.vectorize(inner)
    if outer:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def row_reduction_rule():
    """A dlight rule for kernels whose every stage maps a row to a row (softmax, layer norm).

    Each stage shares the leading (row) axes and reduces or maps only the last one; the rows
    run in parallel with all stages of one row computed together, so intermediates stay in
    cache. dlight's own CPU ``Reduction`` rule vectorizes the last axis with a predicate when
    its extent is symbolic (attention's ``seq``), which LLVM scalarizes: softmax over
    (1, 4, 128, 128) took 0.38 ms that way. Here a symbolic last axis stays a plain loop, and a
    static one is vectorized only in elementwise stages and only in whole vectors.
    """

    def schedule(sch, infos, lanes: int) -> bool:
        if not _rows_then_last(infos):
            return False
        _schedule_rows(sch, infos, lanes)
        return True

    return cpu_rule("RowReduction", schedule)


def _rows_then_last(infos) -> bool:
    """Every block: the same spatial row axes, then one last axis; at least one reduces it."""
    from tvm_ffi.structural import structural_equal

    if not infos or not any(i.is_reduction() for i in infos):
        return False
    rows = [it.dom for it in infos[-1].iters[:-1]]
    for info in infos:
        kinds = info.dom_kind()
        if len(info.iters) != len(rows) + 1 or "R" in kinds[:-1] or "O" in kinds:
            return False
        if any(not structural_equal(it.dom, dom) for it, dom in zip(info.iters, rows)):
            return False
    return True


def _schedule_rows(sch, infos, lanes: int) -> None:
    from tvm import tirx

    last = infos[-1].block_rv
    *row_loops, _ = sch.get_loops(last)
    row = sch.fuse(*row_loops) if len(row_loops) > 1 else row_loops[0]
    sch.parallel(row)
    for info in reversed(infos[:-1]):
        sch.compute_at(info.block_rv, row, preserve_unit_loops=False)
    for info in infos:
        inner = sch.get_loops(info.block_rv)[-1]
        extent = sch.get(inner).extent
        if (not info.is_reduction() and isinstance(extent, tirx.IntImm) and int(extent) % lanes == 0
                and not holds_bools(sch, info.block_rv)):
            sch.vectorize(sch.split(inner, factors=[None, lanes])[1])
