"""Tune one static-shape Relax module for a CUDA GPU with MetaSchedule.

The module is fused by the CUDA pipeline's own passes (compile/cuda/pipeline.py), so the tuning
tasks are exactly the kernels an untuned CUDA build schedules with dlight; the database is applied
to that same fused module, and every kernel it does not cover keeps its dlight schedule. Candidates
are built here into libraries that embed a fatbin (nvcc from compile/cuda/nvcc.py), so the GPU
that measures them, local or behind an RPC tracker, needs only its driver. Without a GPU on this
host and without a tracker there is nothing to measure on: ``check_measurable`` refuses first.
"""

from __future__ import annotations

import os
import tempfile
import time

import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target
from tvm_ffi.structural import structural_hash

from forgeline.runtime.errors import ConfigError
from forgeline.runtime.host import cuda_driver_problem

from ..cuda.pipeline import fuse_passes, load_cuda_intrinsics, lower_passes
from ..params_lift import LiftedParams, lift_constants
from ..cuda.rules import default_rules, schedule_gpu_kernels
from .database import TuningDatabase
from .search import SearchSettings, TunedModule, run_search



# MetaSchedule's CUDA rules need the limits that dlight assumes by default; every GPU since
# compute capability 2.0 allows 1024 threads and 48 KiB of static shared memory per block.
_TUNING_LIMITS = {"max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
                  "thread_warp_size": 32}


def tuning_target(target) -> Target:
    """The CUDA target with the thread and shared-memory limits MetaSchedule requires."""
    config = dict(target.export()) if isinstance(target, Target) else dict(target)
    for key, value in _TUNING_LIMITS.items():
        config.setdefault(key, value)
    return Target(config)


def check_measurable(rpc: tuple[str, int, str] | None) -> None:
    """A sentence when there is neither a local GPU nor an RPC tracker to measure on."""
    problem = cuda_driver_problem() if rpc is None else ""
    if problem:
        raise ConfigError(f"Tuning for CUDA measures every candidate on a GPU, but {problem}; run "
                          "it on a GPU host, or measure on one through its RPC server with "
                          "--rpc-tracker HOST:PORT --rpc-key KEY.")


def prepare_cuda(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """Legalize and fuse as the CUDA build does: the fused kernels are the tuning tasks."""
    load_cuda_intrinsics()  # before MetaSchedule's TuneContext imports every target's
    with target:
        return tvm.transform.Sequential(fuse_passes(target))(mod)


def extract_cuda_tasks(fused: tvm.IRModule, target: Target) -> list:
    """MetaSchedule tasks of the fused module, less the kernels that arrive scheduled (scans)."""
    tasks = ms.relax_integration.extract_tasks(fused, target)
    return [t for t in tasks if not any(f.attrs is not None and f.attrs.get("tirx.is_scheduled", False)
                                        for f in t.dispatched[0].functions.values())]


def design_space(task, target: Target) -> list:
    """The candidate schedules MetaSchedule's CUDA rules generate for one task, unmeasured."""
    context = ms.TuneContext(mod=task.dispatched[0], target=target, space_generator="post-order-apply",
                             task_name=task.task_name)
    return list(context.generate_design_space())


def build_cuda_candidate(mod, target, params) -> str:
    """Build one candidate to a library with its fatbin embedded (runs in a builder worker)."""
    from forgeline.compile.cuda.export import find_cuda_modules
    from forgeline.compile.cuda.library import packer_with_fatbin
    from forgeline.compile.cuda.nvcc import compile_fatbin, find_nvcc

    if params is not None:
        raise ValueError("forgeline tunes modules with embedded weights; params must be None.")
    built = tvm.compile(mod, target=target)
    source = str(find_cuda_modules(built.mod)[0].inspect_source("cuda"))
    fatbin = compile_fatbin(source, str(target.attrs["arch"]), target, find_nvcc())
    path = os.path.join(tempfile.mkdtemp(prefix="forgeline-ms-cuda-"), "candidate.so")
    built.export_library(path, fpack_imports=packer_with_fatbin(source.encode(), fatbin))
    return path


def tune_cuda_module(mod: tvm.IRModule, target: Target, db: TuningDatabase,
                     settings: SearchSettings) -> TunedModule:
    """Tune what the database does not cover, then compile with every record it holds."""
    check_measurable(settings.rpc)
    target = tuning_target(target)
    fused = prepare_cuda(mod, target)
    tasks = extract_cuda_tasks(fused, target)
    keys = [f"{structural_hash(t.dispatched[0]) & (2**64 - 1):016x}" for t in tasks]
    names = [t.task_name for t in tasks]
    per_task = min(settings.max_trials_per_task, settings.trials)
    plan = db.plan(keys, settings.trials, per_task)
    result = TunedModule(executable=None, trials=0, reused_trials=plan.reused_trials)
    if tasks and plan.trials:
        started = time.perf_counter()
        done = run_search(tasks, names, target, db, settings, plan.trials, per_task,
                          build_fn=build_cuda_candidate, cost_model="xgb")
        db.record(keys, names, done, trials=settings.trials, per_task=per_task)
        result.trials, result.seconds = sum(done), time.perf_counter() - started
    for task, name in zip(tasks, names):
        (result.tasks_tuned if db.has_record(task.dispatched[0]) else result.tasks_default).append(name)
    lifted = LiftedParams()
    result.executable = compile_cuda_with_database(fused, target, db, lifted)
    result.params = lifted.arrays
    return result


def compile_cuda_with_database(fused: tvm.IRModule, target: Target, db: TuningDatabase,
                               lifted: LiftedParams | None = None):
    """The database's best schedules, dlight's elsewhere, then TVM's CUDA lowering."""
    with target, db.ms, tvm.transform.PassContext(opt_level=3):
        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(fused)
        mod = schedule_gpu_kernels(default_rules())(mod)  # leaves the tuned kernels alone
        if lifted is not None:  # the weights leave the library, as in untuned builds
            mod = lift_constants(mod, lifted)
        lower = tvm.transform.Sequential(lower_passes(target))
        return tvm.compile(mod, target=target, relax_pipeline=lower)


__all__ = ["tuning_target", "build_cuda_candidate", "check_measurable", "compile_cuda_with_database", "design_space",
           "extract_cuda_tasks", "prepare_cuda", "tune_cuda_module"]
