"""ONNX -> TVM Relax -> one exported library per target.

``build_tvm`` imports the ONNX graph with its weights as constants, runs forgeline's Relax pipeline
for the target (for CUDA that pipeline applies dlight's GPU schedules), lifts the packed weights out
of ``main`` into a trailing ``params`` tuple (params_lift.py) and exports ``model.so``, which then
holds kernels only; the caller stores the weights in the build's parameter file (params_store.py).

CUDA builds run forgeline's CUDA pipeline (compile/cuda/pipeline.py) and are exported by
compile/cuda/export.py: the kernels are compiled to a fatbin with nvcc (NVIDIA's PyPI nvcc first)
and embedded in the library, so the GPU host needs only its driver; without nvcc the library
carries CUDA source and the result says so.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from forgeline.compile.cpu.pipeline import run_cpu_pipeline
from forgeline.compile.dense_layers import dense_layers
from forgeline.compile.guards import native_log_to, require_full_tvm, reraise_if_interrupted, watch_interrupts
from forgeline.compile.onnx_fixups import normalize_for_import
from forgeline.compile.owned_module import OwnedModule
from forgeline.compile.params_lift import LiftedParams
from forgeline.compile.shape_division import floor_shape_divisions
from forgeline.compile.targets import TargetSpec
from forgeline.compile.vm_exec import DEFAULT_CPU_VM, build_executable, vm_mode_for
from forgeline.compile.weight_transposes import TransposedWeight, fold_weight_transposes, read_weight
from forgeline.runtime.memory import release_freed_memory
from forgeline.runtime.errors import ArtifactError, CompileError, MissingDependencyError, error_summary
from forgeline.runtime.storage import errno_in_text, storage_error

logger = logging.getLogger(__name__)

LIB_NAME = "model.so"


@dataclass
class TvmBuildResult:
    lib_file: str  # relative to out_dir
    codegen_only: bool  # True: code generated, not compiled to what the target runs
    note: str  # one honest sentence on what was produced
    seconds: float  # wall time of the whole build
    extra_files: list[str] = field(default_factory=list)  # relative to out_dir
    unscheduled: list[str] = field(default_factory=list)  # CPU kernels no schedule rule took
    dense_layers: list[str] = field(default_factory=list)  # "KxN" of each matmul the dense rewrites take (CPU)
    # The weights ``main`` takes as its trailing ``params`` tuple, in order (params_lift.py); the
    # caller stores them (params_store.py) and drops them.
    params: list = field(default_factory=list)


def _import_compiler():
    require_full_tvm()
    try:
        import onnx
        import tvm
        from tvm.relax.frontend.onnx import from_onnx
    except ImportError as exc:
        raise MissingDependencyError(
            f"Compiling needs onnx and Apache TVM ({exc.name} is missing); install them with "
            "`pip install onnx apache-tvm==0.27.* apache-tvm-ffi==0.1.14.post1`."
        ) from exc
    return onnx, tvm, from_onnx


def _import_onnx(onnx_path: Path, shape_dict: dict[str, list[int]] | None = None):
    """Import the ONNX graph into Relax, weights embedded; ``shape_dict`` fixes input shapes."""
    onnx, tvm, from_onnx = _import_compiler()
    started = time.perf_counter()
    try:
        # The graph alone: each weight is read from its external-data file as the importer reaches
        # it, so the graph's weights are never held twice (proto and Relax constants).
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises assorted errors for bad files
        raise ArtifactError(f"{onnx_path} is not a readable ONNX model ({error_summary(exc, last=True)}); "
                            "export the bundle again.") from exc
    normalize_for_import(model)
    _refuse_unsupported_ops(model)
    transposed = fold_weight_transposes(model)
    op_types = sorted({node.op_type for node in model.graph.node})
    try:
        with external_data_from(onnx_path.parent, transposed), warnings.catch_warnings():
            # from_onnx runs the ONNX checker on the graph loaded without its weights, which then
            # reports each external tensor as "not regular file" (a UserWarning per weight); the
            # export already checked the model with its weights (export/onnx_export.py, onnx_source.py).
            warnings.filterwarnings("ignore", message="Data of TensorProto", category=UserWarning)
            mod = from_onnx(model, shape_dict=shape_dict, keep_params_in_input=False)
    except Exception as exc:  # noqa: BLE001 - the importer raises many TVM/Python error types
        reraise_if_interrupted(exc)
        node = _failing_node(exc)
        ops_named = [op for op in op_types if op in str(exc)]
        where = (f" on op {node.op_type} (node {node.name or node.output[0]})" if node is not None
                 else f" in ONNX op {', '.join(ops_named)}" if ops_named else "")
        raise CompileError(
            f"TVM's ONNX importer failed{where}: {error_summary(exc, last=True)}. Rewrite that part of the "
            "model (docs/tvm-notes.md in the forgeline repository lists known importer limits) or report the op."
        ) from exc
    logger.info("Imported %s into Relax (%d op types) in %.2f s.", onnx_path.name,
                len(op_types), time.perf_counter() - started)
    return tvm, floor_shape_divisions(mod)  # the importer's T.Div in reshapes (shape_division.py)


def _failing_node(exc: BaseException):
    """The ONNX node TVM's importer was converting when it raised, read from the traceback: its
    converter loop (``_construct_nodes``) holds it as ``node``; None when the failure was elsewhere."""
    tb = exc.__traceback__
    found = None
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_construct_nodes":
            found = tb.tb_frame.f_locals.get("node")
        tb = tb.tb_next
    return found if hasattr(found, "op_type") else None


def _refuse_unsupported_ops(model) -> None:
    """One sentence naming the op type and node of the first node TVM's importer cannot convert."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    from forgeline.compile.graph_fixups import first_unsupported_node

    found = first_unsupported_node(model, set(_get_convert_map()))
    if found is not None:
        raise CompileError(f"TVM's ONNX importer has no converter for op {found[0]} (node {found[1]}), so the "
                           "model cannot be compiled; replace that op in the model, or run it with ONNX Runtime.")


@contextlib.contextmanager
def external_data_from(folder: Path, transposed: dict[str, TransposedWeight] | None = None):
    """Make TVM's ONNX importer read external tensors from ``folder``, one at a time.

    The importer turns each initializer into numpy with ``onnx_frontend.get_numpy`` (onnx's
    ``to_array``, which reads a tensor's external data relative to a base folder, the current one
    by default) and then into a Relax constant, so each tensor's bytes live briefly twice at most
    (three times for the ``transposed`` ones, read by weight_transposes.read_weight).
    """
    from onnx.numpy_helper import to_array
    from tvm.relax.frontend.onnx import onnx_frontend

    transposed = transposed or {}

    def get_numpy(tensor):
        array = to_array(tensor, base_dir=str(folder))
        how = transposed.get(tensor.name)
        return array if how is None else read_weight(array, how)

    original = onnx_frontend.get_numpy
    onnx_frontend.get_numpy = get_numpy
    try:
        yield
    finally:
        onnx_frontend.get_numpy = original


def import_relax(onnx_path: Path, shape_dict: dict[str, list[int]] | None = None):
    """The ONNX model as a Relax IRModule (static shapes where ``shape_dict`` gives them)."""
    return _import_onnx(Path(onnx_path), shape_dict)[1]


def _cuda_pipeline(target, precision: str, lifted: LiftedParams | None):
    from forgeline.compile.cuda.pipeline import cuda_pipeline

    return cuda_pipeline(target, precision, lifted=lifted)


def _codegen_environment(spec: TargetSpec):
    if spec.kind != "cuda":
        return contextlib.nullcontext()
    from forgeline.compile.cuda.nvcc import nvcc_for_tvm_codegen

    return nvcc_for_tvm_codegen()


def _compile(tvm, owned: OwnedModule, spec: TargetSpec, gemm_rows: int | None = None,
             unscheduled: list[str] | None = None, precision: str = "fp32", lifted: LiftedParams | None = None,
             vm: str = DEFAULT_CPU_VM):
    """Run the pipeline on the module ``owned`` holds (taken from it) and generate code."""
    from tvm.target import Target

    started = time.perf_counter()
    try:
        # Both pipelines schedule every kernel: TVM's default CPU pipeline schedules nothing, and
        # its CUDA one stops at the first dlight rule that raises (compile/cuda/rules.py).
        target = Target(spec.target)
        with _codegen_environment(spec):
            if spec.kind == "cuda":
                executable = tvm.compile(owned.take(), target=target,
                                         relax_pipeline=_cuda_pipeline(target, precision, lifted))
            else:
                # Run here rather than inside tvm.compile, which would hold the imported weights
                # until codegen ends (owned_module.py).
                with target:
                    lowered = run_cpu_pipeline(owned, target, gemm_rows=gemm_rows, unscheduled=unscheduled,
                                               precision=precision, lifted=lifted)
                executable = build_executable(lowered, target, vm)
    except CompileError:
        raise
    except Exception as exc:  # noqa: BLE001
        reraise_if_interrupted(exc)
        raise CompileError(f"TVM could not compile the model for {spec.tag}: "
                           f"{error_summary(exc, last=True)}.") from exc
    logger.info("Ran the Relax pipeline and codegen for %s in %.2f s.", spec.tag,
                time.perf_counter() - started)
    return executable


def build_tvm(onnx_path: Path, spec: TargetSpec, out_dir: Path, *,
              gemm_rows: int | None = None, precision: str = "fp32", lift: bool = False,
              vm: str = DEFAULT_CPU_VM) -> TvmBuildResult:
    """Compile ``onnx_path`` for ``spec`` into ``out_dir/model.so``.

    With ``lift`` the library holds kernels only and its weights come back in ``result.params``
    (``main`` takes them as a trailing tuple); without, they are embedded in the library.

    ``gemm_rows`` fixes the CPU GEMM tile height (cpu.matmul.DECODE_ROWS for a decode graph);
    ``precision``: "bf16" puts CPU dense layers on AMX (cpu.pipeline.apply_cpu_defaults), "fp16" casts
    CUDA matmuls to fp16 on tensor cores (fp32 accumulation); ``vm`` how the Relax VM runs a CPU
    build's graph (vm_exec.py; CUDA builds are bytecode).
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if not onnx_path.is_file():
        raise ArtifactError(f"The ONNX model {onnx_path} does not exist; export the bundle first.")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    logger.info("Building %s for %s: %s", onnx_path, spec.tag, spec.target)
    with watch_interrupts(), native_log_to(logger):
        return _build(onnx_path, spec, out_dir, gemm_rows, precision, started, LiftedParams() if lift else None,
                      vm_mode_for(spec.kind, vm))


def _build(onnx_path: Path, spec: TargetSpec, out_dir: Path, gemm_rows: int | None, precision: str,
           started: float, lifted: LiftedParams | None, vm: str) -> TvmBuildResult:
    tvm, mod = _import_onnx(onnx_path)
    dense = dense_layers(mod) if spec.kind != "cuda" else []
    logger.info("%d dense layer(s) take the %s dense-layer rewrite.", len(dense), precision)
    unscheduled: list[str] = []
    owned = OwnedModule(mod)
    del mod  # the pipeline frees the imported weights as it replaces them (owned_module.py)
    release_freed_memory()  # the importer's numpy copies, before the pipeline allocates
    executable = _compile(tvm, owned, spec, gemm_rows, unscheduled, precision, lifted, vm)
    # The pipeline's passes (and TVM, which keeps them) still reach ``lifted``: hand its arrays over.
    params = []
    if lifted is not None:
        params, lifted.arrays = lifted.arrays, []
    export_started = time.perf_counter()
    try:
        if spec.kind == "cuda":
            from forgeline.compile.cuda.export import export_cuda

            exported = export_cuda(executable, spec.target, out_dir / LIB_NAME)
            codegen_only, note, extra = exported.codegen_only, exported.note, exported.extra_files
        else:
            executable.export_library(str(out_dir / LIB_NAME))
            codegen_only, note, extra = False, (
                f"{LIB_NAME} is a native library for {spec.target.get('mcpu')} "
                f"({spec.requires.get('arch')})."), []
    except CompileError:
        raise
    except Exception as exc:  # noqa: BLE001
        reraise_if_interrupted(exc)
        code = errno_in_text(str(exc))  # the compiler's "No space left on device", as text
        if code is not None:
            raise storage_error(exc, f"Exporting the {spec.tag} library to {out_dir}", code) from exc
        raise CompileError(f"Exporting the {spec.tag} library failed: {error_summary(exc, last=True)}. Check "
                           "that a C compiler (gcc) is on PATH.") from exc
    logger.info("Exported %s in %.2f s.", out_dir / LIB_NAME, time.perf_counter() - export_started)
    seconds = time.perf_counter() - started
    logger.info("Built %s in %.2f s: %s", spec.tag, seconds, note)
    return TvmBuildResult(lib_file=LIB_NAME, codegen_only=codegen_only, note=note,
                          seconds=seconds, extra_files=extra, unscheduled=unscheduled, dense_layers=dense,
                          params=params)


__all__ = ["TvmBuildResult", "build_tvm", "import_relax"]
