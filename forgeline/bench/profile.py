"""Per-kernel time of a TVM CPU build, through the VM's instrument hook."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from forgeline.runtime.errors import ArtifactError, ConfigError
from forgeline.runtime.format import Manifest
from forgeline.runtime.schema import vm_tag

from .timing import BenchOptions
from .workload import bench_inputs


@dataclass
class KernelTime:
    """Time spent in one function the VM calls (a PrimFunc, a packed host kernel, a VM builtin)."""

    name: str
    calls: int  # per forward pass
    ms: float  # per forward pass, all calls together
    share: float  # of the summed time of every call


def profile_tvm_kernels(path: str | Path, options: BenchOptions = BenchOptions(),
                        lib: str | None = None) -> list[KernelTime]:
    """Per-kernel time of the artifact's TVM CPU build (or of ``lib``, one of the profiled build's
    libraries such as a tuned bucket, relative to the artifact; it takes that build's weights).

    The build is the one the first TVM backend of ``options.backends`` times: ``tvm-bf16`` or
    ``tvm-int8`` profile that precision's build, anything else the default CPU build.

    Uses the VM's instrument hook, which runs before and after every call instruction, so each
    PrimFunc, each ``forgeline.cpu.matmul`` call and each VM builtin is timed as it runs in the
    real model; the hook itself adds a few microseconds per call. Sorted, slowest first. Only a
    build compiled with ``--vm bytecode`` has the hook (compile/vm_exec.py): the profile runs the
    one compiled beside the timed build (``profiled_build``), and says how to add it when there is
    none.
    """
    root = Path(path)
    manifest = Manifest.load(root)
    build = profiled_build(root, manifest, options.backends)  # before anything loads or runs
    libraries = {build.lib, *build.graph_libs.values(), *(b["lib"] for b in build.buckets.values())}
    if lib is not None and lib not in libraries:
        raise ConfigError(f"{lib} is not a library of {build.tag}, the build profiled here; pass one of "
                          f"{', '.join(sorted(libraries))}.")

    from forgeline.runtime.amx import needs_amx, request_amx_permission
    from forgeline.runtime.backends.cpu_kernels import register_cpu_kernels
    from forgeline.runtime.backends.environ import allow_tvm_threads
    from forgeline.runtime.backends.tvm import import_tvm_runtime
    from forgeline.runtime.backends.tvm_io import FfiCpuIO
    from forgeline.runtime.backends.tvm_params import bind_params
    from forgeline.runtime.host import cpu_core_count
    from forgeline.runtime.params_file import binding_for

    allow_tvm_threads(cpu_core_count())  # as TvmExecutor does: else TVM runs serially on 2 cores
    tvm = import_tvm_runtime()
    register_cpu_kernels()
    if needs_amx(build.requires):
        request_amx_permission()
    lib_path = root / (lib or build.lib)
    vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(lib_path)), tvm.cpu(0))
    inputs = bench_inputs(manifest, options)
    args = [tvm.runtime.tensor(inputs[name]) for name in manifest.input_names()]
    binding = binding_for(root, build, lib or build.lib)
    if binding is not None:  # the weights' tuple, bound as the runtime binds it
        args.append(bind_params(FfiCpuIO(), binding, "cpu:0").array)
    main = vm["main"]
    for _ in range(max(1, options.warmup)):
        main(*args)
    totals: dict[str, float] = {}
    calls: dict[str, int] = {}
    started: dict[str, float] = {}

    def instrument(func, symbol, before_run, ret_value, *call_args):
        now = time.perf_counter()
        if before_run:
            started[symbol] = now
        else:
            totals[symbol] = totals.get(symbol, 0.0) + now - started.pop(symbol, now)
            calls[symbol] = calls.get(symbol, 0) + 1
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    vm.set_instrument(instrument)
    for _ in range(options.iters):
        main(*args)
    if not totals:  # the record says bytecode, the library is compiled: they disagree
        raise ArtifactError(f"{lib_path} ran no VM call the profiler could see, although the build record "
                            f"of {build.tag} says bytecode; the artifact is inconsistent, rebuild that build.")
    whole = sum(totals.values())
    rows = [KernelTime(name, calls[name] // options.iters, t / options.iters * 1e3, t / whole)
            for name, t in totals.items()]
    return sorted(rows, key=lambda r: -r.ms)


def profiled_build(root: Path, manifest: Manifest, backends: tuple[str, ...]):
    """The bytecode build of the build ``backends`` time: that build when it is one, else the one
    compiled beside it with ``--vm bytecode`` (its tag + -bytecode); ConfigError, before anything
    runs, when there is none."""
    timed = _selected_build(manifest, backends)
    if timed.vm == "bytecode":
        return timed
    profiled = manifest.builds.get(vm_tag(timed.tag, timed.kind, "bytecode"))
    if profiled is not None and profiled.vm == "bytecode":
        return profiled
    # "-attnbf16": compile/cpu/attention_bf16.ATTENTION_TAG (importing compile/ takes seconds)
    attention = " --attention-precision reduced" if "-attnbf16" in timed.tag else ""
    raise ConfigError(
        f"The build {timed.tag} runs its graphs as compiled code, which has no hook to time each kernel; "
        f"add a build to profile beside it with `forgeline compile {root} --vm bytecode --precision "
        f"{timed.precision}{attention}` (tag {vm_tag(timed.tag, timed.kind, 'bytecode')}), then profile again.")


def _selected_build(manifest: Manifest, backends: tuple[str, ...]):
    from forgeline.runtime.model import select_build

    from .peers import precision_build

    for backend in backends:
        if backend in ("tvm-bf16", "tvm-int8"):
            return precision_build(manifest, backend.removeprefix("tvm-"))
        if backend.startswith("tvm"):
            break
    return select_build(manifest, "cpu")
