"""Tune one static-shape Relax module with MetaSchedule and compile it with the best schedules.

How this composes with the untuned CPU defaults (compile/cpu/pipeline.py): the module is
legalized and fused once (``prepare``, with the defaults' fast exp/tanh/erf). Unless
``tune_matmuls``, the matmul kernels then take the default register-blocked GEMM schedule with
packed weights (compile/cpu/matmul.py; on gpt-small it beat 1,216 MetaSchedule trials on the
matmuls: 13 ms against 16.9), so tuning spends its trials on what is left. The fused TIR
functions are the tuning tasks, and the same fused module is what the database is applied to,
so database keys always match. Functions the database does not
cover get the defaults' schedules (``schedule_cpu_kernels``), which leave tuned ones alone.
Calling ``apply_cpu_defaults`` whole before tuning would schedule every function and leave
MetaSchedule nothing to tune.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target
from tvm_ffi.structural import structural_hash

from forgeline.runtime.backends.environ import allow_tvm_threads
from forgeline.runtime.exit_cleanup import removed_on_stop
from forgeline.runtime.host import cpu_core_count
from forgeline.runtime.progress import stage

from ..cpu.pipeline import precision_graph, schedule_cpu_kernels, schedule_matmul_kernels
from ..cpu.rules import vector_lanes
from ..cpu.weights import fold_packed_weights
from ..params_lift import LiftedParams, lift_constants
from ..vm_exec import DEFAULT_CPU_VM, build_executable
from .database import TuningDatabase
from .builder import PooledBuilder, WarmupDeferredXGB, make_runner, make_strategy
from .progress import TuningProgress, quiet_metaschedule_console, reset_metaschedule_loggers

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """The knobs of one MetaSchedule run (the public ones live in ``TuneOptions``)."""

    trials: int  # total measured candidates wanted for this module
    max_trials_per_task: int  # cap per fused function
    timeout_s: float  # per candidate build and per measurement
    rpc: tuple[str, int, str] | None = None  # tracker host, port, key; None measures here
    seed: int = 0
    tune_matmuls: bool = False  # False: matmuls keep the default GEMM schedule, untuned
    # The build's CPU kernel switch (tuning/precision.py): reduced-precision dense layers keep
    # their hand-scheduled kernels, and MetaSchedule tunes what stays fp32 around them.
    kernels: str = "fp32"
    vm: str = DEFAULT_CPU_VM  # how the Relax VM runs the bucket's graph: the build's own mode (vm_exec.py)


@dataclass
class TunedModule:
    executable: object  # relax VMExecutable, ready for export_library
    trials: int  # measured in this run (0 when the database already covered the request)
    reused_trials: int  # earlier trials on the same tasks that this run counted as done
    tasks_tuned: list[str] = field(default_factory=list)  # have a measured schedule
    tasks_default: list[str] = field(default_factory=list)  # left at the default schedules
    gemm_schedule: list[str] = field(default_factory=list)  # matmuls on the GEMM schedule (cpu/matmul.py)
    seconds: float = 0.0  # spent searching and measuring (0 when nothing was tuned)
    params: list = field(default_factory=list)  # the weights ``main`` takes as its params tuple (params_lift.py)


def prepare(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """Legalize and fuse: the fused TIR functions become the tuning tasks."""
    from tvm.relax.pipeline import library_dispatch_passes

    with target:
        passes = [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings(),
                  *library_dispatch_passes(target), relax.transform.LegalizeOps(),
                  relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
                  relax.transform.FuseOps(), relax.transform.FuseTIR()]
        return tvm.transform.Sequential(passes)(mod)


def tune_module(mod: tvm.IRModule, target: Target, db: TuningDatabase,
                settings: SearchSettings) -> TunedModule:
    """Tune what the database does not cover yet, then compile with every record it holds."""
    fused = prepare(precision_graph(mod, settings.kernels, lanes=vector_lanes(target)), target)
    gemm = []
    if not settings.tune_matmuls:
        hand_written = _scheduled_kernels(fused)  # softmax_rows, the MoE row kernels
        fused = schedule_matmul_kernels(fused, target)  # marked scheduled: not tasks
        gemm = sorted(set(_scheduled_kernels(fused)) - set(hand_written))
    tasks = [t for t in ms.relax_integration.extract_tasks(fused, target) if not _scheduled(t)]
    keys = [f"{structural_hash(t.dispatched[0]) & (2**64 - 1):016x}" for t in tasks]
    names = [t.task_name for t in tasks]
    per_task = min(settings.max_trials_per_task, settings.trials)
    plan = db.plan(keys, settings.trials, per_task)
    result = TunedModule(executable=None, trials=0, reused_trials=plan.reused_trials,
                         gemm_schedule=gemm)
    if not tasks:
        logger.info("No tunable functions in the module; compiling with the defaults.")
    elif plan.trials == 0:
        logger.info("reusing %d records, tuning 0 trials (%d tasks already tuned in %s)",
                    plan.reused_trials, len(tasks), db.folder)
    else:
        started = time.perf_counter()
        trials_per_task = run_search(tasks, names, target, db, settings, plan.trials, per_task)
        db.record(keys, names, trials_per_task, trials=settings.trials, per_task=per_task)
        result.trials, result.seconds = sum(trials_per_task), time.perf_counter() - started
    for task, name in zip(tasks, names):
        (result.tasks_tuned if db.has_record(task.dispatched[0]) else result.tasks_default).append(name)
    lifted = LiftedParams()
    result.executable = compile_with_database(fused, target, db, lifted, settings.vm)
    result.params = lifted.arrays
    return result


def _scheduled_kernels(mod) -> list[str]:
    """Names of the kernels marked scheduled (by a rule, or written that way)."""
    return sorted(gv.name_hint for gv, f in mod.functions.items()
                  if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None
                  and bool(f.attrs.get("tirx.is_scheduled", False)))


def _scheduled(task) -> bool:
    """A kernel that arrived scheduled (by an upstream pass) keeps its schedule: not a task."""
    funcs = task.dispatched[0].functions.values()
    return any(f.attrs is not None and bool(f.attrs.get("tirx.is_scheduled", False)) for f in funcs)


def run_search(tasks, names: list[str], target: Target, db: TuningDatabase,
               settings: SearchSettings, trials: int, per_task: int, *, build_fn=None,
               cost_model=None) -> list[int]:
    """Run MetaSchedule for ``trials`` candidates over ``tasks``; return trials per task.

    ``build_fn`` builds one candidate (default: MetaSchedule's local build; CUDA passes its
    fatbin builder), ``cost_model`` defaults to the warm-up-deferred XGBoost model.
    """
    per_round = max(4, min(32, math.ceil(trials / len(tasks))))
    logger.info("tuning %d task(s) for %d trials (at most %d per task, %d per round), measuring "
                "%s", len(tasks), trials, per_task, per_round,
                "through RPC tracker %s:%d key %s" % settings.rpc if settings.rpc else "here")
    # Before the runner's workers start: measured candidates must run on every core, as the
    # runtime runs them (runtime/backends/environ.py); without it TVM ran them on one of two.
    allow_tvm_threads(cpu_core_count())
    builder = PooledBuilder(max_workers=cpu_core_count(), timeout_sec=settings.timeout_s,
                            **({"build_fn": build_fn} if build_fn is not None else {}))
    runner = make_runner(timeout_sec=settings.timeout_s, rpc=settings.rpc)
    reset_metaschedule_loggers()
    with (tempfile.TemporaryDirectory(prefix="forgeline-tune-logs-") as logs, removed_on_stop(Path(logs)),
          stage(f"search {len(tasks)} kernel(s)", total=trials, unit="trials") as bar):
        progress = TuningProgress(names, trials, bar)
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks, work_dir=logs, strategy=make_strategy(), seed=settings.seed)
        quiet_metaschedule_console()
        try:
            ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=logs,
                          max_trials_global=trials, max_trials_per_task=per_task,
                          num_trials_per_iter=per_round, builder=builder, runner=runner,
                          database=db.ms,
                          cost_model=cost_model or WarmupDeferredXGB(num_tuning_cores=cpu_core_count()),
                          measure_callbacks=[*ms.MeasureCallback.create("default"), progress])
        finally:
            builder.shutdown()
            runner_pool = getattr(runner, "pool", None)  # the runner's workers die with it too
            if runner_pool is not None:
                runner_pool.shutdown(wait=False)
    logger.info("tuning done: %s", progress.summary())
    return list(progress.trials)


def compile_with_database(fused: tvm.IRModule, target: Target, db: TuningDatabase,
                          lifted: LiftedParams | None = None, vm: str = DEFAULT_CPU_VM):
    """Swap in the database's best schedules, default ones elsewhere, then lower and build."""
    # relax.pipeline.dataflow_lower_passes is broken for CPU in TVM 0.27 (it looks the passes
    # up on the cpu_generic package, which does not export them); take them from the module.
    from tvm.relax.backend.cpu_generic.pipeline import dataflow_lower_passes, finalize_passes

    with target, db.ms, tvm.transform.PassContext(opt_level=3):
        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(fused)
        mod = schedule_cpu_kernels(mod, target)  # skips the functions marked scheduled above
        mod = fold_packed_weights(mod)
        if lifted is not None:  # the packed weights leave the library, as in untuned builds
            mod = lift_constants(mod, lifted)
        # Only lowering from here: fusing again would rename the tuned functions.
        lower = tvm.transform.Sequential([*dataflow_lower_passes(target), *finalize_passes(target)])
        return build_executable(mod, target, vm, relax_pipeline=lower)


__all__ = ["SearchSettings", "TunedModule", "compile_with_database", "prepare", "run_search", "tune_module"]
