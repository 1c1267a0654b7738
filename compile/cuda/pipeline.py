"""The Relax pipeline of a CUDA build: TVM's default CUDA passes, with forgeline's scheduling.

The passes are those of ``tvm.relax.backend.cuda.pipeline`` (library dispatch, legalize, fuse,
schedule, lower, finalize) in the same order, with three changes: cumsums are moved onto their
last axis first (``scan``: TVM's other GPU scan does not lower for dynamic sizes), the kernels are scheduled by
``rules.schedule_gpu_kernels``, which survives the dlight rules that raise, and ``precision="fp16"``
runs ``ToMixedPrecision`` first (fp16 matmul inputs and weights, fp32 accumulation; softmax,
reductions and everything TVM's policy keeps in fp32 stay fp32) and tries the tensor-core matmul
rule first.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cuda import pipeline as tvm_cuda
from tvm.target import Target

from ..params_lift import lift_params_pass
from ..tensor_intrinsics import load_tensor_intrinsics
from .rules import default_rules, schedule_gpu_kernels
from .scan import cumsum_on_last_axis

PRECISIONS = ("fp32", "fp16")


def mixed_precision_passes(precision: str) -> list:
    """fp16: cast matmul operands to fp16 with fp32 accumulators; fp32: nothing."""
    if precision == "fp32":
        return []
    # ToMixedPrecision works on dataflow blocks; the imported module already has them.
    return [relax.transform.ConvertToDataflow(), relax.transform.ToMixedPrecision(out_dtype="float32")]


def fuse_passes(target: Target, precision: str = "fp32") -> list:
    """Up to the fused TIR kernels (what MetaSchedule extracts as tasks); run under ``target``."""
    return [
        *mixed_precision_passes(precision),
        cumsum_on_last_axis,  # before the scans are dispatched (scan.py)
        *tvm_cuda.library_dispatch_passes(target),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),  # fp16: folds the weight casts into fp16 constants
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def lower_passes(target: Target) -> list:
    """From scheduled kernels to the VM: TVM's CUDA lowering and finalization, unchanged."""
    return [*tvm_cuda.dataflow_lower_passes(target), *tvm_cuda.finalize_passes(target)]


def load_cuda_intrinsics() -> None:
    """Register the CUDA tensor-core intrinsics, and no other target's.

    dlight's tensor-core rule and MetaSchedule's TuneContext import them lazily; loaded through
    ``tensor_intrinsics`` they cost ~5 s instead of 70 s in a process with torch loaded.
    """
    load_tensor_intrinsics(("cuda",))


def cuda_pipeline(target: Target, precision: str = "fp32", rules: list | None = None, lifted=None):
    """A module pass that compiles a Relax module for the CUDA ``target``.

    ``rules`` replaces the dlight rules (``rules.default_rules``); ``[]`` puts every kernel on
    the one-thread fallback. With ``lifted`` (compile.params_lift.LiftedParams) the weights, folded
    to their final dtype, leave the library for a trailing ``params`` tuple.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")  # checked upstream

    @tvm.transform.module_pass(opt_level=0, name="ForgelineCudaPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if precision == "fp16":  # the tensor-core rule imports them; fp32's rules never do
            load_cuda_intrinsics()
        with target:
            schedule = schedule_gpu_kernels(default_rules(precision) if rules is None else rules)
            lift = [lift_params_pass(lifted)] if lifted is not None else []
            passes = [*fuse_passes(target, precision), schedule, *lift, *lower_passes(target)]
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


__all__ = ["PRECISIONS", "cuda_pipeline", "fuse_passes", "load_cuda_intrinsics", "lower_passes",
           "mixed_precision_passes"]
