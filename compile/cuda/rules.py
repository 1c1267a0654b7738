"""Schedule every TIR kernel of a CUDA build, whatever dlight makes of it.

TVM 0.27's ``dl.ApplyDefaultSchedule`` takes the first rule that returns a schedule, but several
dlight rules *raise* on kernels they do not recognise instead of returning None, and one raise ends
the whole build:
- ``gpu.Reduction`` and ``gpu.GEMV`` assert in ``detect_dominant_read`` on a read whose region has
  an extent above 1 (the expert-choice router's rank count: a sum over a broadcast comparison),
  which is why every MoE model failed with a bare ``AssertionError``;
- ``gpu.GeneralReduction`` raises "The reduction block vars are not used to index the output
  buffers" on the decode graph's one-row matmul with an epilogue.
Here a rule that raises counts as a rule that declined, and the next one is tried. ``Fallback``
(bind the spatial loops, keep reductions per thread) takes nearly everything that is left; a kernel
it cannot take either runs on one GPU thread (``serial_schedule``), slow but correct, and is named
in the log so that a missing rule is seen, never silently skipped.
"""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.target import Target

logger = logging.getLogger(__name__)


def default_rules(precision: str = "fp32") -> list:
    """dlight's CUDA rules in the order the default pipeline uses; fp16 tries tensor cores first."""
    rules = [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
             dl.gpu.Fallback()]
    if precision == "fp16":
        # dl.gpu.Matmul only tensorizes when every fixed extent exceeds 64; asked for fp16, every
        # fp16 matmul goes to the tensor cores (MatmulTensorization pads the small ones).
        rules.insert(0, dl.gpu.matmul.MatmulTensorization())
    return rules


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    return func.attrs is not None and bool(func.attrs.get("tirx.is_scheduled", False))


def serial_schedule(func: tirx.PrimFunc) -> s_tir.Schedule:
    """Run every top-level loop nest of ``func`` on one GPU thread of one block (last resort)."""
    sch = s_tir.Schedule(func)
    root = sch.get_sblock(sch.mod["main"].body.block.name_hint)
    for block in sch.get_child_blocks(root):
        loops = sch.get_loops(block)
        outer = sch.add_unit_loop(loops[0] if loops else block)
        inner = sch.add_unit_loop(outer)  # (1 block, 1 thread) around the untouched nest
        sch.bind(outer, "blockIdx.x")
        sch.bind(inner, "threadIdx.x")
    return sch


def schedule_kernel(func: tirx.PrimFunc, target: Target, rules: list, name: str) -> tirx.PrimFunc:
    """The first schedule a rule gives for ``func``; a rule that raises has declined."""
    for rule in rules:
        try:
            space = rule.apply(func, target, False)
        except Exception as exc:  # noqa: BLE001 - dlight raises assertions and ScheduleErrors
            logger.debug("%s declined %s by raising %s", type(rule).__name__, name,
                         type(exc).__name__)
            continue
        if space is None:
            continue
        sch = space[0] if isinstance(space, list) else space
        logger.debug("%s scheduled %s", type(rule).__name__, name)
        return sch.mod["main"].with_attr("tirx.is_scheduled", True)
    logger.warning("no dlight rule schedules kernel %s; it runs on one GPU thread", name)
    return serial_schedule(func).mod["main"].with_attr("tirx.is_scheduled", True)


def schedule_gpu_kernels(rules: list):
    """A module pass: schedule every unscheduled PrimFunc with ``rules`` (see module docstring)."""

    @tvm.transform.module_pass(opt_level=0, name="ForgelineScheduleGpuKernels")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        target = Target.current(allow_none=False)
        updates = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and not _is_scheduled(func):
                func_target = func.attrs.get("target", target) if func.attrs else target
                updates[gvar] = schedule_kernel(func, func_target, rules, gvar.name_hint)
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return _pass


__all__ = ["default_rules", "schedule_gpu_kernels", "schedule_kernel", "serial_schedule"]
