"""Row kernels whose reductions run in SIMD lanes: layer norm and its kin, without tuning.

A layer norm legalizes into per-row reductions (sum, sum of squared deviations) over a static
last axis, a per-row scalar stage (the mean) and an elementwise output stage. dlight's CPU
``Reduction`` rule and ``row_reduction_rule`` keep each reduction a scalar loop, because LLVM may
not reorder a float sum into lanes by itself: gpt-small's (1, 128, 256) layer norm took 0.062 ms
that way. Here each reduction is split into ``lanes`` partial sums (``rfactor``), the partial
sums are accumulated as one vector per row, and only the final ``lanes``-to-1 sum is scalar:
0.007 ms on the same kernel (znver4, one thread). The summation order changes as in any SIMD
reduction; the result is checked against numpy in the tests.

The rule takes a kernel only when every stage shares the same leading row axes and has at
most one axis after them, static and whole SIMD vectors long; anything else (softmax over a
symbolic sequence) is left to the next rule.
"""

from __future__ import annotations

from .rules import cpu_rule, holds_bools


def row_lanes_rule():
    """A dlight rule: rows in parallel, every stage of a row together, reductions in lanes."""

    def schedule(sch, infos, lanes: int) -> bool:
        if not _rows_with_vector_tail(infos, lanes):
            return False
        _schedule(sch, infos, lanes)
        return True

    return cpu_rule("RowLanes", schedule)


def _rows_with_vector_tail(infos, lanes: int) -> bool:
    """Same row axes everywhere, then at most one static axis of whole vectors; a reduction
    over that axis somewhere (otherwise it is an elementwise kernel for the fallback)."""
    from tvm import tirx
    from tvm_ffi.structural import structural_equal

    if len(infos) < 2 or not any(i.is_reduction() for i in infos):
        return False
    rows = [it.dom for it in infos[-1].iters[:-1]]
    if not rows:
        return False
    for info in infos:
        kinds, iters = info.dom_kind(), info.iters
        if len(iters) not in (len(rows), len(rows) + 1) or "O" in kinds:
            return False
        if "R" in kinds[:len(rows)] or any(
                not structural_equal(it.dom, dom) for it, dom in zip(iters, rows)):
            return False
        if len(iters) > len(rows):
            extent = iters[-1].dom  # a Python int or an IntImm when static
            if not isinstance(extent, (int, tirx.IntImm)) or int(extent) % lanes:
                return False
    return True


def _schedule(sch, infos, lanes: int) -> None:
    partials = {}
    for info in infos[:-1]:  # split every reduction into ``lanes`` partial sums first
        if info.is_reduction() and len(sch.get_loops(info.block_rv)) > len(infos[-1].iters) - 1:
            _, lane = sch.split(sch.get_loops(info.block_rv)[-1], factors=[None, lanes])
            partials[info.block_rv] = sch.rfactor(lane, 0)
    last = infos[-1].block_rv
    *row_loops, _ = sch.get_loops(last)
    row = sch.fuse(*row_loops) if len(row_loops) > 1 else row_loops[0]
    sch.parallel(row)
    for info in reversed(infos[:-1]):  # consumers before producers, partial sums last
        sch.compute_at(info.block_rv, row, preserve_unit_loops=False)
        if info.block_rv in partials:
            sch.compute_at(partials[info.block_rv], row, preserve_unit_loops=False)
    for info in infos:
        if not info.is_reduction() and len(sch.get_loops(info.block_rv)) > 1:
            if holds_bools(sch, info.block_rv):
                continue  # a scalar stage (rules.holds_bools)
            sch.vectorize(sch.split(sch.get_loops(info.block_rv)[-1], factors=[None, lanes])[1])
    for partial in partials.values():
        *_, lane, chunk = sch.get_loops(partial)
        sch.reorder(chunk, lane)  # the lane loop inside: one vector of partial sums per row
        sch.vectorize(lane)
        sch.decompose_reduction(partial, chunk)


__all__ = ["row_lanes_rule"]
