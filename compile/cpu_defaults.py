"""Fast-without-tuning CPU builds: BLAS for matmuls, default schedules for everything else.

TVM 0.27's default Relax pipeline for ``llvm`` legalizes and fuses but schedules nothing, so every
kernel is a naive single-threaded loop nest (gpt-small: ~840 ms against ONNX Runtime's ~8 ms).
Measured on the project's 2-core benchmark machines, two things close that gap without tuning:

1. **Matmuls go to a BLAS.** Every fp32 ``R.matmul`` (dense projections, attention's batched
   QK^T and PV, the MoE experts' stacked matmuls) becomes ``call_dps_packed`` of
   ``forgeline.cpu.matmul``, which the runtime registers on numpy's bundled OpenBLAS
   (runtime/cpu_kernels.py). A 128x256x1024 GEMM ran there at ~125 GFLOP/s on one OpenBLAS
   thread and ~225 on two (a 150-trial tuned TVM GEMM: ~225); runtime/cpu_kernels.py says why
   one thread is the default. Symbolic batch/seq stay untouched: the VM allocates the output
   and numpy broadcasts batch dims.
2. **The rest gets dlight-style CPU rules.** After legalization and fusion, reductions
   (softmax, layer norm) take dlight's CPU ``Reduction`` rule (rows in parallel, vectorized
   injective parts) and every other kernel takes ``ParallelFallback`` below (inline
   injective producers, fuse the spatial loops, parallelize the outer part and vectorize the
   inner part at the target's SIMD width).

The pipeline is the default CPU one with these two steps inserted; see ``cpu_pipeline``.
"""

from __future__ import annotations

import logging

from forgeline.runtime.cpu_kernels import MATMUL_FUNC

logger = logging.getLogger(__name__)

_FALLBACK_VECTOR_BITS = 128  # SSE width: what every x86-64 and aarch64 target has


def offload_matmuls(mod):
    """Rewrite every fp32 ``R.matmul`` in the Relax functions of ``mod`` to the BLAS kernel."""
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    mod = mod.clone()  # the rewrite replaces functions in place; leave the caller's module be
    lhs, rhs = wildcard(), wildcard()
    pattern = is_op("relax.matmul")(lhs, rhs)
    count = 0

    def rewrite(call, matches):
        nonlocal count
        out_ty = call.ty
        if getattr(out_ty, "dtype", None) != "float32" or any(
                getattr(matches[x].ty, "dtype", None) != "float32" for x in (lhs, rhs)):
            return call  # OpenBLAS sgemm is fp32 only; other dtypes keep TVM's kernel
        count += 1
        return relax.call_dps_packed(MATMUL_FUNC, [matches[lhs], matches[rhs]], out_ty=out_ty)

    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gvar] = rewrite_call(pattern, rewrite, func)
    logger.info("Handed %d fp32 matmuls to %s (OpenBLAS).", count, MATMUL_FUNC)
    return mod


def _vector_lanes(target) -> int:
    """fp32 lanes of the target's widest SIMD register (16 on AVX-512)."""
    from tvm.target.codegen import llvm_get_vector_width

    try:
        bits = int(llvm_get_vector_width(target))
    except Exception:  # noqa: BLE001 - LLVM may not know a cross target's width
        bits = _FALLBACK_VECTOR_BITS
    return max(1, (bits if bits > 0 else _FALLBACK_VECTOR_BITS) // 32)


def _fallback_rule(parallel: bool):
    """A dlight rule for CPU kernels no other rule takes: parallel outer, vector inner."""
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import ScheduleRule, try_inline

    class ParallelFallback(ScheduleRule):
        def apply(self, func, target, _tunable):
            if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
                return None
            sch = s_tir.Schedule(func)
            infos = normalize_prim_func(sch)
            if infos is None:
                return None
            lanes = _vector_lanes(target)
            for info in try_inline(sch, infos):
                _schedule_block(sch, info, lanes, parallel)
            return sch

    return ParallelFallback()


def _schedule_block(sch, info, lanes: int, parallel: bool) -> None:
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
    sch.reorder(*spatial, *reduce)
    fused = sch.fuse(*spatial)
    if reduce:
        if parallel:
            sch.parallel(fused)  # rows in parallel; the reduction stays sequential per row
        return
    outer, inner = sch.split(fused, factors=[None, lanes])
    if parallel:
        sch.parallel(outer)
    sch.vectorize(inner)


def schedule_cpu_kernels(mod, target, *, parallel: bool = True):
    """Give every unscheduled PrimFunc of ``mod`` a default CPU schedule (no tuning)."""
    from tvm.s_tir import dlight as dl

    rules = [dl.cpu.Reduction()] if parallel else []  # dlight's rule always parallelizes
    with target:
        return dl.ApplyDefaultSchedule(*rules, _fallback_rule(parallel))(mod)


def apply_cpu_defaults(mod, target, *, offload_matmul: bool = True):
    """Make ``mod`` fast on an llvm ``target`` without tuning; returns the transformed module.

    Input: a Relax IRModule as the ONNX importer gives it (high-level ops, symbolic shapes
    allowed). Output: the module legalized and fused (the default CPU pipeline's dispatch and
    legalize passes), with fp32 matmuls handed to ``forgeline.cpu.matmul`` when
    ``offload_matmul`` is true, and every PrimFunc not yet scheduled given a schedule and marked
    ``tirx.is_scheduled``. Run the default CPU pipeline's dataflow-lowering and finalization
    passes after it (``cpu_pipeline`` does).

    With tuning: dlight skips PrimFuncs already marked ``tirx.is_scheduled`` (as
    ``MetaScheduleApplyDatabase`` marks tuned ones), and MetaSchedule's task extraction skips
    them too. So a tuning flow tunes the legalized module first (``offload_matmul=False`` if it
    wants the matmuls searched rather than sent to BLAS), applies its database, and calls this
    last: tuned kernels stay, these defaults cover the rest. Calling this *before* extracting
    tasks leaves MetaSchedule nothing to tune. The matmul rewrite needs high-level
    ``R.matmul`` calls, so a flow that keeps BLAS matmuls and tunes the rest calls
    ``offload_matmuls(mod)`` before legalizing. Legalizing a legalized module is a no-op.
    """
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    if target.kind.name != "llvm":
        raise ValueError(f"apply_cpu_defaults is for llvm targets, not {target.kind.name}.")
    if offload_matmul:
        mod = offload_matmuls(mod)
    with target:
        mod = tvm.transform.Sequential(cpu_generic.library_dispatch_passes(target)
                                       + cpu_generic.legalize_passes(target))(mod)
    return schedule_cpu_kernels(mod, target)


def cpu_pipeline(target, *, offload_matmul: bool = True):
    """The default Relax CPU pipeline with ``apply_cpu_defaults`` in place of its first half."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    @tvm.transform.module_pass(opt_level=0, name="ForgelineCpuPipeline")
    def _pipeline(mod, _ctx):
        mod = apply_cpu_defaults(mod, target, offload_matmul=offload_matmul)
        with target:
            return tvm.transform.Sequential(cpu_generic.dataflow_lower_passes(target)
                                            + cpu_generic.finalize_passes(target))(mod)

    return _pipeline


__all__ = ["apply_cpu_defaults", "cpu_pipeline", "offload_matmuls", "schedule_cpu_kernels"]
