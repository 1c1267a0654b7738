"""Compile a bundle for a target and check the build against the golden vectors.

Transactional (runtime/artifact_io.py): the build is made in a staging folder next to
``tvm/<tag>/``, measured there against the golden vectors, and only then moved into place and
recorded, under the artifact's lock, in the manifest as it is on disk at that moment. A build that
fails, misses tolerance, is killed or is interrupted leaves the artifact exactly as it was; two
compiles of one artifact at once both land.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from forgeline.runtime.artifact_io import staging_dir, update_manifest
from forgeline.runtime.confine import check_confinement
from forgeline.runtime.errors import ArtifactError, CompileError, ConfigError
from forgeline.runtime.format import ONNX_FILE, TVM_DIR, BuildRecord, Manifest, StageRecord, precision_tolerance
from forgeline.runtime.host import can_run, describe_host, read_cpu_features
from forgeline.runtime.kv_check import checked_stage
from forgeline.runtime.memory import release_freed_memory
from forgeline.runtime.model import load, open_model
from forgeline.runtime import progress
from forgeline.runtime.params_file import PARAMS_FILE
from forgeline.runtime.parity import raise_if_failed, routing_note

from .cpu.matmul import DECODE_ROWS
from .params_store import ParamStoreWriter
from .cpu.attention_bf16 import split_attention, with_bf16_attention
from .precision import PrecisionPlan, plan_precision
from .guards import watch_interrupts
from .targets import resolve_target
from .tuning import TuneOptions, tune_artifact
from .tvm_build import build_tvm
from .vm_exec import DEFAULT_CPU_VM, check_vm_mode, vm_mode_for, vm_tag

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class CompileOptions:
    """Where to compile for; resolved values are logged once before work starts."""

    target: str = "cpu"  # a preset: "cpu" (this host's LLVM CPU) or "cuda"
    arch: str | None = None  # cuda: "sm_90" by default
    mcpu: str | None = None  # cpu: LLVM CPU name; detected from the host by default
    num_cores: int | None = None  # cpu: threads the schedules assume; all cores by default
    precision: str = "fp32"  # of the dense matmuls: "fp32", "bf16", "int8" (CPU) or "fp16" (CUDA)
    emulate_amx: bool = False  # bf16 instructions as TIR loops: same numerics, slow (for tests)
    emulate_int8: bool = False  # int8 dot products (VNNI's) as TIR loops: same numerics (for tests)
    bf16_kernel: str = "auto"  # "amx" or "avx512bf16" forces one (precision.py); auto: the CPU's best
    int8_kernel: str = "auto"  # "amx", "vnni", "avxvnni" or "avx2" forces one (precision.py); auto: the CPU's best
    # Attention's batched matmuls (QK^T, PV): "fp32", or "reduced" for bf16 operands with fp32 sums
    # in a bf16 or int8 build (cpu/attention_bf16.py); the build's tag then ends in "-attnbf16".
    attention_precision: str = "fp32"
    # How the Relax VM runs a CPU build's graphs: "compiled" (native code) or "bytecode"
    # (interpreted, which `forgeline bench --profile` needs); CUDA builds are bytecode (vm_exec.py).
    vm: str = DEFAULT_CPU_VM

    @property
    def emulated(self) -> bool:
        """Whether this build's reduced-precision instructions are emulated in TIR loops."""
        return self.emulate_int8 if self.precision == "int8" else self.emulate_amx


def resolve_precision_target(options: CompileOptions, tune: TuneOptions | None = None):
    """The target of ``options``, precision included; refuses bad combinations before any work
    (``forgeline build`` calls it before exporting)."""
    return resolve_precision_plan(options, tune).spec


def resolve_precision_plan(options: CompileOptions, tune: TuneOptions | None = None) -> PrecisionPlan:
    """``resolve_precision_target``'s target with the CPU pipeline's kernel switch."""
    if tune is not None and options.precision == "fp16":
        raise ConfigError("Tuning a CUDA build searches fp32 schedules only; build --precision fp16 "
                          "without the tuning flags.")
    check_vm_mode(options.vm)
    spec = resolve_target(options.target, arch=options.arch, mcpu=options.mcpu, num_cores=options.num_cores)
    host_features = None if options.mcpu else read_cpu_features()  # an explicit mcpu: a cross build
    plan = plan_precision(spec, options.precision, host_features=host_features,
                          emulate=options.emulated, bf16_kernel=options.bf16_kernel,
                          int8_kernel=options.int8_kernel)
    plan = _attention_plan(plan, options)
    spec = dataclasses.replace(plan.spec, tag=vm_tag(plan.spec.tag, plan.spec.kind, options.vm))
    return PrecisionPlan(spec, plan.kernels)


def _attention_plan(plan: PrecisionPlan, options: CompileOptions) -> PrecisionPlan:
    """``plan`` with attention's batched matmuls in bf16 when ``options`` asks for it."""
    if options.attention_precision == "fp32":
        return plan
    if options.attention_precision != "reduced":
        raise ConfigError(f"attention_precision={options.attention_precision!r} is not one of fp32, reduced.")
    if options.precision not in ("bf16", "int8"):
        raise ConfigError(f"attention_precision='reduced' applies to --precision bf16 or int8 builds, not "
                          f"{options.precision}; build one of those, or leave attention at fp32.")
    kernels, tag = with_bf16_attention(plan.kernels, plan.spec.tag)
    return PrecisionPlan(dataclasses.replace(plan.spec, tag=tag), kernels)


def compile_artifact(path: str | Path, options: CompileOptions = CompileOptions(),
                     tune: TuneOptions | None = None) -> Manifest:
    """Add a TVM build for ``options.target`` to the bundle or artifact at ``path``.

    With ``tune``, also add a tuned static-shape build per bucket (compile/tuning/).
    """
    root = Path(path)
    release_freed_memory()  # what an export in this process freed (forgeline build)
    manifest = Manifest.load(root)
    check_confinement(root, manifest)
    manifest.verify_files(root)
    if ONNX_FILE not in manifest.files:
        raise ArtifactError(f"{root} holds no {ONNX_FILE}; export the model first with `forgeline export`.")
    plan = resolve_precision_plan(options, tune)
    spec = plan.spec
    log.info("compile %s for %s (target %s)", root, spec.tag, spec.target)
    final = root / TVM_DIR / spec.tag
    with watch_interrupts(), staging_dir(final) as staged:
        build, files = _build_into(root, manifest, plan, staged, options)
        record = _check_staged(root, manifest, build, files)
        if record is not None and not record.passed:
            raise_if_failed(record, manifest.reference)  # the artifact keeps what it had
        build, files = _rebase(build, files, f"{TVM_DIR}/{staged.name}/", f"{TVM_DIR}/{spec.tag}/")

        def add(current: Manifest) -> None:
            current.builds[spec.tag] = build
            current.files.update(files)
            if record is not None:
                current.stages[record.stage] = record

        manifest = update_manifest(root, add, drop=lambda m: _forget_build(m, spec.tag), moves=[(staged, final)])
    if record is not None:
        log.info("%s vs eager: pass%s", record.stage, f" ({routing_note(record)})" if routing_note(record) else "")
    if tune is not None:
        manifest = tune_artifact(root, spec.tag, tune)
    return manifest


def _build_into(root: Path, manifest: Manifest, plan: PrecisionPlan, staged: Path,
                options: CompileOptions) -> tuple[BuildRecord, dict[str, str]]:
    """Build the model and its extra graphs into ``staged``; the record and file hashes (staged paths)."""
    from forgeline.runtime.format import sha256_file

    spec, precision = plan.spec, plan.kernels
    vm = vm_mode_for(spec.kind, options.vm)
    rel = lambda name: f"{TVM_DIR}/{staged.name}/{name}"  # noqa: E731 - paths inside the artifact
    store = ParamStoreWriter(staged / PARAMS_FILE)
    try:
        build, files = _build_libraries(root, manifest, spec, staged, precision, store, vm)
        written = store.finish()
    except BaseException:
        store.abandon()
        raise
    if written:
        build.params_file = rel(PARAMS_FILE)
        files[build.params_file] = sha256_file(root / build.params_file)
    build.precision, build.tolerance = options.precision, _tolerance_record(options.precision)
    build.note += _kernel_note(precision)
    log.info("stored %d distinct parameter tensors for %d libraries in %s", store.stored,
             len(build.lib_params), PARAMS_FILE)
    return build, files


def _build_libraries(root: Path, manifest: Manifest, spec, staged: Path, precision: str,
                     store: ParamStoreWriter, vm: str) -> tuple[BuildRecord, dict[str, str]]:
    """The main library and the extra graphs' ones; their weights go to ``store``, each tensor once."""
    from forgeline.runtime.format import sha256_file

    with progress.stage(f"compile for {spec.tag}"):
        result = build_tvm(root / ONNX_FILE, spec, staged, precision=precision, lift=True, vm=vm)
    rel = lambda name: f"{TVM_DIR}/{staged.name}/{name}"  # noqa: E731 - paths inside the artifact
    build = BuildRecord(
        tag=spec.tag, kind=spec.kind, target=spec.target, requires=spec.requires, lib=rel(result.lib_file),
        codegen_only=result.codegen_only, note=result.note, build_seconds=round(result.seconds, 2),
        unscheduled=result.unscheduled, dense_layers=result.dense_layers, vm=vm,
    )
    build.lib_params[build.lib] = store.add(result.params)
    files = {rel(name): sha256_file(root / rel(name)) for name in [result.lib_file, *result.extra_files]}
    del result  # its weights are in the store's file now
    release_freed_memory()
    build.graph_libs = _build_graphs(root, manifest, spec, staged, files, precision, store, build.lib_params, vm)
    return build, files


def _kernel_note(kernels: str) -> str:
    """What the build record says of its reduced-precision kernel ("bf16...", "int8-<isa>...")."""
    kernels, bf16_attention = split_attention(kernels)
    attention = " Attention's batched matmuls take bf16 operands with fp32 sums." if bf16_attention else ""
    return _dense_note(kernels) + attention


def _dense_note(kernels: str) -> str:
    if kernels.startswith("int8"):
        precision, name = "int8", kernels.split("-")[1].upper()
    elif kernels.startswith("bf16"):
        precision, name = "bf16", "AVX512-BF16 (vdpbf16ps)" if "avx512bf16" in kernels else "AMX"
    else:
        return ""
    if kernels.endswith("emulated"):
        return (f" Its {precision} dense layers run the {name} kernel with the instructions emulated in TIR: "
                "same numerics, slow, for checking only.")
    return f" Its {precision} dense layers run the {name} kernel."


def _tolerance_record(precision: str) -> dict[str, float]:
    """A reduced-precision build carries its tolerance; fp32 builds use the manifest's."""
    if precision == "fp32":
        return {}
    return dataclasses.asdict(precision_tolerance(precision))


def _rebase(build: BuildRecord, files: dict[str, str], old: str, new: str) -> tuple[BuildRecord, dict[str, str]]:
    """The build record and file list with paths under ``old`` moved under ``new``."""
    move = lambda path: new + path.removeprefix(old) if path.startswith(old) else path  # noqa: E731
    build = copy.deepcopy(build)
    build.lib = move(build.lib)
    build.graph_libs = {name: move(lib) for name, lib in build.graph_libs.items()}
    build.params_file = move(build.params_file) if build.params_file else ""
    build.lib_params = {move(lib): keys for lib, keys in build.lib_params.items()}
    return build, {move(path): digest for path, digest in files.items()}


def _build_graphs(root: Path, manifest: Manifest, spec, build_dir: Path, files: dict[str, str],
                  precision: str, store: ParamStoreWriter, lib_params: dict[str, list[str]],
                  vm: str) -> dict[str, str]:
    """Build each extra graph (KV-cache prefill/decode, ...) into <build_dir>/<graph>/; lib paths by name.

    A graph that does not compile fails the whole build with a sentence naming it.
    """
    from forgeline.runtime.format import sha256_file

    libs = {}
    for index, (name, graph) in enumerate(manifest.graphs.items(), 1):
        log.info("building graph %s (%d/%d)", name, index, len(manifest.graphs))
        rows = DECODE_ROWS if name == "decode" else None  # one row per sequence per step
        try:
            with progress.stage(f"compile the {name} graph"):
                result = build_tvm(root / graph.onnx, spec, build_dir / name, gemm_rows=rows, precision=precision,
                                   lift=True, vm=vm)
        except CompileError as exc:
            raise CompileError(f"The {name} graph of {manifest.name} did not compile for {spec.tag}, so "
                               f"the build is incomplete and was removed: {exc}") from exc
        for file in [result.lib_file, *result.extra_files]:
            relpath = f"{TVM_DIR}/{build_dir.name}/{name}/{file}"
            files[relpath] = sha256_file(root / relpath)
        libs[name] = f"{TVM_DIR}/{build_dir.name}/{name}/{result.lib_file}"
        lib_params[libs[name]] = store.add(result.params)
        del result  # its weights are in the store's file now (or were there already)
        release_freed_memory()
    return libs


def _check_staged(root: Path, manifest: Manifest, build: BuildRecord, files: dict[str, str]) -> StageRecord | None:
    """The staged build measured against the golden vectors; None when this host cannot run it."""
    runnable, why = can_run(build.requires, describe_host())
    if build.codegen_only or not runnable:
        log.warning("build %s not checked on this host: %s", build.tag, why or build.note)
        return None
    staged = copy.deepcopy(manifest)
    staged.builds = {build.tag: build}
    staged.files.update(files)
    check_confinement(root, staged)
    with progress.stage(f"check {build.tag} vs eager"), open_model(root, staged, backend="tvm", target=build.tag) as model:
        return checked_stage(model)


def measure_build(root: Path, tag: str) -> StageRecord:
    """Run one build on every golden case, and its KV-cache graphs, and compare with the eager outputs."""
    with load(root, backend="tvm", target=tag) as model:
        return checked_stage(model)


def _forget_build(manifest: Manifest, tag: str) -> None:
    """Drop build ``tag``, its stage records (its buckets' too) and its files from the manifest."""
    prefix = f"{TVM_DIR}/{tag}/"
    manifest.builds.pop(tag, None)
    manifest.stages.pop(f"{TVM_DIR}/{tag}", None)
    for stage in [k for k in manifest.stages if k.startswith(prefix)]:  # its buckets' checks
        manifest.stages.pop(stage)
    manifest.files = {k: v for k, v in manifest.files.items() if not k.startswith(prefix)}
