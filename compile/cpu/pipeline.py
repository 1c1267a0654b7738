"""Fast-without-tuning CPU builds: default schedules for every kernel TVM leaves unscheduled.

TVM 0.27's default Relax pipeline for ``llvm`` legalizes and fuses but schedules nothing, so every
kernel is a naive single-threaded loop nest (gpt-small: ~840 ms against ONNX Runtime's ~8 ms).
Measured on the project's 2-core benchmark machine, three things close most of that gap:

1. **Matmuls get a register-blocked GEMM schedule** (matmul.py) with their bias/GELU/
   residual epilogue fused in and their constant weights packed into column panels at build
   time (weights.py). It covers dense projections, attention's batched QK^T and PV, and the
   MoE experts' stacked matmuls, at symbolic batch and sequence sizes.
2. **exp/tanh/erf are vectorizable polynomials** (fast_math.py): LLVM otherwise calls libm
   once per lane in GELU and softmax.
3. **The rest gets dlight-style CPU rules.** Reductions (softmax, layer norm) take dlight's CPU
   ``Reduction`` rule (rows in parallel, vectorized injective parts) and every other kernel
   takes ``ParallelFallback`` below (inline injective producers, fuse the spatial loops,
   parallelize the outer part and vectorize the inner part at the target's SIMD width).

``offload_matmul=True`` keeps the earlier design, where every fp32 matmul became a call to
``forgeline.cpu.matmul`` on numpy's OpenBLAS (runtime/backends/cpu_kernels.py): one BLAS thread, because
OpenBLAS's spinning workers fight TVM's thread pool on a small machine. The GEMM schedule beat it
on the whole model (gpt-small 29 -> 18 ms) by using both cores, fusing the epilogue and saving a
Python call per matmul. The pipeline is the default CPU one with these steps inserted; see
``cpu_pipeline``.
"""

from __future__ import annotations

import logging

from forgeline.compile.owned_module import OwnedModule, take_module
from forgeline.compile.parallel_dense import combine_parallel_dense
from forgeline.compile.params_lift import lift_constants
from forgeline.compile.symbolic_rows import name_compound_rows
from forgeline.runtime.backends.cpu_kernels import MATMUL_FUNC

from .attention import fuse_attention
from .attention_bf16 import bf16_attention_matmuls, split_attention
from .bf16 import bf16_dense_matmuls
from .bf16_moe import bf16_experts
from .dense_gelu import fuse_dense_gelu
from .fast_math import fast_math
from .int8_layers import int8_dense_matmuls, int8_experts
from .matmul import matmul_rule
from .moe_rows import compact_expert_rows
from .output_views import view_output_reshapes
from .row_lanes import row_lanes_rule
from .rules import fallback_rule, row_reduction_rule, vector_lanes
from .shape_defs import hoist_shape_definitions
from .softmax import LANES
from .tied_rows import mark_tied_lookups
from .weights import fold_packed_weights, mark_weight_operands

logger = logging.getLogger(__name__)


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


def schedule_matmul_kernels(mod, target):
    """Give only the matmul kernels their default schedule, weights marked for packing.

    The tuning flow calls this on the fused module so that MetaSchedule skips the matmuls
    (they come back marked ``tirx.is_scheduled``) and spends its trials on the rest. The weight
    marks stay on the other kernels too, so MetaSchedule may re-lay their weights (layer norm's
    gamma/beta); ``fold_packed_weights`` folds those copies as well.
    """
    from tvm.s_tir import dlight as dl

    with target:
        return dl.ApplyDefaultSchedule(matmul_rule())(mark_weight_operands(mod))


def schedule_cpu_kernels(mod, target, *, gemm_rows: int | None = None):
    """Give every unscheduled PrimFunc of ``mod`` a default CPU schedule (no tuning).

    ``gemm_rows`` fixes the GEMM tile height (cpu.matmul.DECODE_ROWS for decode graphs).
    """
    from tvm.s_tir import dlight as dl

    # dlight's own CPU Reduction rule takes the reductions the row rule does not (layer norm's
    # per-row mean, with one axis fewer than its other stages).
    rules = [matmul_rule(gemm_rows), row_lanes_rule(), row_reduction_rule(), dl.cpu.Reduction(),
             fallback_rule()]
    with target:
        return dl.ApplyDefaultSchedule(*rules)(mod)


def unscheduled_kernels(mod) -> list[str]:
    """Names of the PrimFuncs no rule scheduled: they run as naive loops, about 100x slower."""
    import tvm

    return sorted(gvar.name_hint for gvar, func in mod.functions.items()
                  if isinstance(func, tvm.tirx.PrimFunc) and not (func.attrs and func.attrs.get("tirx.is_scheduled")))


def rewrite_graph(mod, experts=None):
    """The Relax-level rewrites every CPU build makes before legalization, tuned or not: sibling
    dense layers as one (parallel_dense.py; a no-op when ``apply_cpu_defaults`` did it already),
    MoE experts on their filled rows (moe_rows.py; ``experts``: a reduced precision's grouped
    GEMM), vectorizable exp/tanh/erf (fast_math.py)."""
    return fast_math(compact_expert_rows(combine_parallel_dense(mod), experts))


def precision_graph(mod, precision: str = "fp32", gemm_rows: int | None = None, lanes: int = LANES):
    """``rewrite_graph`` after the dense layers (and MoE experts) of a reduced ``precision``
    ("int8-<isa>[-emulated]", "bf16[-avx512bf16][-emulated]": compile/precision.py) became calls of
    their hand-scheduled kernels. The tuned and the untuned builds both start here, so a tuned
    bucket runs the same reduced-precision kernels as the dynamic build beside it. A switch ending
    in ``+attention-bf16`` also gives attention's batched matmuls bf16 operands (attention_bf16.py);
    otherwise multi-head attention runs on one fused fp32 kernel (attention.py)."""
    precision, bf16_attention = split_attention(precision)
    mod = combine_parallel_dense(mod)  # one GEMM per sibling group before the dense rewrites
    if bf16_attention:
        mod = bf16_attention_matmuls(mod)
    else:
        mod = fuse_attention(mod, lanes)  # attention's core as one kernel (attention.py), in every precision
    experts = None
    if precision.startswith("int8"):
        mod = int8_dense_matmuls(mod, precision, rows=gemm_rows)
        experts = int8_experts(precision)
    elif precision != "fp32":
        kernel = "avx512bf16" if "avx512bf16" in precision else "amx"
        mod = bf16_dense_matmuls(mod, emulate=precision.endswith("-emulated"), kernel=kernel, rows=gemm_rows)
        experts = bf16_experts(precision)
        if kernel == "avx512bf16":
            mod = fuse_dense_gelu(mod, emulate=precision.endswith("-emulated"))
    # A tied table still read by a take (an fp32 head) reads the head's packed panels once the
    # packing is folded (tied_rows.py; reduced-precision heads did it in their rewrite).
    mod = mark_tied_lookups(mod)
    return rewrite_graph(mod, experts)


def apply_cpu_defaults(mod, target, *, offload_matmul: bool = False, gemm_rows: int | None = None,
                       precision: str = "fp32"):
    """Make ``mod`` fast on an llvm ``target`` without tuning; returns the transformed module.

    Input: a Relax IRModule as the ONNX importer gives it (high-level ops, symbolic shapes
    allowed). Output: the module with fast exp/tanh/erf, legalized and fused (the default CPU
    pipeline's dispatch and legalize passes), every PrimFunc given a schedule and marked
    ``tirx.is_scheduled`` and constant weights of matmuls packed. With ``offload_matmul`` the
    fp32 matmuls go to ``forgeline.cpu.matmul`` (OpenBLAS) instead of the GEMM schedule. Run the
    default CPU pipeline's dataflow-lowering and finalization passes after it
    (``cpu_pipeline`` does).

    With tuning: dlight skips PrimFuncs already marked ``tirx.is_scheduled`` (as
    ``MetaScheduleApplyDatabase`` marks tuned ones), and MetaSchedule's task extraction skips
    them too. The tuning flow (compile/tuning/search.py) therefore fuses the module, schedules only the
    matmuls (``schedule_matmul_kernels``) unless they are to be tuned, tunes the rest, applies
    its database, and then gives what is left these defaults.
    """
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    if target.kind.name != "llvm":
        raise ValueError(f"apply_cpu_defaults is for llvm targets, not {target.kind.name}.")
    mod = take_module(mod)  # an OwnedModule: each stage's input is freed once the next has it
    mod = combine_parallel_dense(mod)  # before the dense-layer rewrites: one GEMM per sibling group
    if offload_matmul:
        mod = offload_matmuls(mod)
    mod = precision_graph(mod, precision, gemm_rows, vector_lanes(target))
    with target:
        mod = tvm.transform.Sequential(cpu_generic.library_dispatch_passes(target)
                                       + cpu_generic.legalize_passes(target))(mod)
        mod = hoist_shape_definitions(mod)  # FuseOps may emit a use of moe_rows<i> before its match_cast
        scheduled = OwnedModule(schedule_cpu_kernels(mark_weight_operands(mod), target, gemm_rows=gemm_rows))
        del mod  # the weights as they are now live in ``scheduled`` alone, for the packing to free
        return fold_packed_weights(scheduled)


def run_cpu_pipeline(mod, target, *, offload_matmul: bool = False, gemm_rows: int | None = None,
                     unscheduled: list[str] | None = None, precision: str = "fp32", lifted=None):
    """The default Relax CPU pipeline with ``apply_cpu_defaults`` in place of its first half.

    Kernels left without a schedule are logged and appended to ``unscheduled``. With ``lifted``
    (a compile.params_lift.LiftedParams), the packed weights leave the library for a trailing
    ``params`` tuple and their values go to ``lifted``. Give ``mod`` as an OwnedModule (and keep
    no other reference) for the build to hold one copy of the weights at a time; run it under
    ``with target:`` and compile the result with ``relax_pipeline=None``.
    """
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    mod = apply_cpu_defaults(mod, target, offload_matmul=offload_matmul, gemm_rows=gemm_rows,
                             precision=precision)
    missed = unscheduled_kernels(mod)
    if missed:
        # INFO, not a warning: small kernels (MoE cumsums) are expected here, and the build
        # record lists them (BuildRecord.unscheduled) for whoever profiles it.
        logger.info("%d kernel(s) got no CPU schedule and will run as naive loops: %s",
                    len(missed), ", ".join(missed))
    if unscheduled is not None:
        unscheduled.extend(missed)
    if lifted is not None:  # after every weight is packed: the packed values are lifted
        mod = lift_constants(mod, lifted)
    mod = view_output_reshapes(mod)  # the logits' reshape after a reduced-precision head
    with target:
        return tvm.transform.Sequential(cpu_generic.dataflow_lower_passes(target)
                                        + cpu_generic.finalize_passes(target))(mod)


def cpu_pipeline(target, *, offload_matmul: bool = False, gemm_rows: int | None = None,
                 unscheduled: list[str] | None = None, precision: str = "fp32", lifted=None):
    """``run_cpu_pipeline`` as a Relax pipeline for ``tvm.compile`` (which holds its input
    module throughout, weights included)."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="ForgelineCpuPipeline")
    def _pipeline(mod, _ctx):
        return run_cpu_pipeline(mod, target, offload_matmul=offload_matmul, gemm_rows=gemm_rows,
                                unscheduled=unscheduled, precision=precision, lifted=lifted)

    return _pipeline


__all__ = ["apply_cpu_defaults", "cpu_pipeline", "offload_matmuls", "precision_graph", "rewrite_graph", "run_cpu_pipeline",
           "schedule_cpu_kernels", "unscheduled_kernels", "schedule_matmul_kernels"]
