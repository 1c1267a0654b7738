"""ONNX -> TVM Relax -> one exported library per target.

``build_tvm`` imports the ONNX graph with its weights embedded, runs TVM's default Relax pipeline
for the target (for CUDA that pipeline applies dlight's GPU schedules) and exports ``model.so``.

CUDA on a machine without a GPU: TVM 0.27's CUDA codegen leaves the kernels as CUDA *source*
when no CUDA driver is loaded, and a library exported like that compiles them at load time on the
GPU host, which then needs nvcc or NVRTC there. When nvcc is on this machine we compile the
source to a fatbin (SASS for the arch plus its PTX) here and put that in the library instead, so
the GPU host needs only the driver. Without nvcc we keep the source-carrying library, save the
source as ``model.cu``, and say so in the result.
"""

from __future__ import annotations

import logging
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from forgeline.compile.cpu.pipeline import cpu_pipeline
from forgeline.compile.guards import native_log_to, require_full_tvm, reraise_if_interrupted, watch_interrupts
from forgeline.compile.targets import TargetSpec
from forgeline.runtime.errors import ArtifactError, CompileError, MissingDependencyError, error_summary
from forgeline.runtime.host import cuda_compute_capabilities

logger = logging.getLogger(__name__)

LIB_NAME = "model.so"
CUDA_SOURCE_NAME = "model.cu"


@dataclass
class TvmBuildResult:
    lib_file: str  # relative to out_dir
    codegen_only: bool  # True: code generated, not compiled to what the target runs
    note: str  # one honest sentence on what was produced
    seconds: float  # wall time of the whole build
    extra_files: list[str] = field(default_factory=list)  # relative to out_dir
    unscheduled: list[str] = field(default_factory=list)  # CPU kernels no schedule rule took


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
        model = onnx.load(str(onnx_path), load_external_data=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises assorted errors for bad files
        raise ArtifactError(f"{onnx_path} is not a readable ONNX model with its external data "
                            f"({error_summary(exc, last=True)}); export the bundle again.") from exc
    op_types = sorted({node.op_type for node in model.graph.node})
    try:
        mod = from_onnx(model, shape_dict=shape_dict, keep_params_in_input=False)
    except Exception as exc:  # noqa: BLE001 - the importer raises many TVM/Python error types
        reraise_if_interrupted(exc)
        ops_named = [op for op in op_types if op in str(exc)]
        where = f" in ONNX op {', '.join(ops_named)}" if ops_named else ""
        raise CompileError(
            f"TVM's ONNX importer failed{where}: {error_summary(exc, last=True)}. Rewrite that part of the "
            "model (docs/tvm-notes.md in the forgeline repository lists known importer limits) or report the op."
        ) from exc
    logger.info("Imported %s into Relax (%d op types) in %.2f s.", onnx_path.name,
                len(op_types), time.perf_counter() - started)
    return tvm, mod


def import_relax(onnx_path: Path, shape_dict: dict[str, list[int]] | None = None):
    """The ONNX model as a Relax IRModule (static shapes where ``shape_dict`` gives them)."""
    return _import_onnx(Path(onnx_path), shape_dict)[1]


def _compile(tvm, mod, spec: TargetSpec, gemm_rows: int | None = None,
             unscheduled: list[str] | None = None, precision: str = "fp32"):
    from tvm.target import Target

    started = time.perf_counter()
    try:
        # For CUDA, relax.get_default_pipeline(target) includes dlight's GPU schedules (without
        # them a GPU build fails for unbound threads); for CPU it legalizes and fuses but
        # schedules nothing, so llvm builds take forgeline's CPU defaults (compile/cpu/pipeline.py).
        target = Target(spec.target)
        pipeline = (cpu_pipeline(target, gemm_rows=gemm_rows, unscheduled=unscheduled,
                                 precision=precision)
                    if spec.kind == "llvm" else "default")
        executable = tvm.compile(mod, target=target, relax_pipeline=pipeline)
    except Exception as exc:  # noqa: BLE001
        reraise_if_interrupted(exc)
        raise CompileError(f"TVM could not compile the model for {spec.tag}: "
                           f"{error_summary(exc, last=True)}.") from exc
    logger.info("Ran the Relax pipeline and codegen for %s in %.2f s.", spec.tag,
                time.perf_counter() - started)
    return executable


def _find_cuda_modules(module) -> list:
    found, stack = [], [module]
    while stack:
        current = stack.pop()
        if current.kind == "cuda":
            found.append(current)
        stack.extend(current.imports)
    return found


# ---- library-blob rewriting: swap the CUDA module's source for a fatbin ------------------------
# tvm_ffi's packed library binary: <nbytes u64> <indptr vec<u64>> <children vec<u64>> then per
# module <kind str> [<payload bytes>] ("_lib" has no payload); str/bytes/vec are <u64 len><data>.
# A CUDA module's payload is <fmt str> <fmap> <code bytes>.

def _read_u64(buf: bytes, pos: int) -> tuple[int, int]:
    return struct.unpack_from("<Q", buf, pos)[0], pos + 8


def _read_chunk(buf: bytes, pos: int, item_size: int = 1) -> tuple[bytes, int]:
    count, pos = _read_u64(buf, pos)
    end = pos + count * item_size
    return buf[pos:end], end


def _chunk(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def _swap_cuda_payload(payload: bytes, source: bytes, fatbin: bytes) -> bytes:
    fmt, pos = _read_chunk(payload, 0)
    if fmt != b"cuda" or not payload.endswith(_chunk(source)):
        raise CompileError(
            f"The CUDA module's serialized layout is not the one forgeline knows (format "
            f"{fmt[:16]!r}); this TVM version changed it, so build without nvcc on PATH to ship "
            "source, or update forgeline."
        )
    fmap = payload[pos:len(payload) - len(_chunk(source))]
    return _chunk(b"fatbin") + fmap + _chunk(fatbin)


def _rewrite_library_bin(blob: bytes, source: bytes, fatbin: bytes) -> bytes:
    total, pos = _read_u64(blob, 0)
    indptr_raw, pos = _read_chunk(blob, pos, 8)
    _, pos = _read_chunk(blob, pos, 8)
    pieces, cursor, swapped = [], 8, 0
    for _ in range(len(indptr_raw) // 8 - 1):
        kind, pos = _read_chunk(blob, pos)
        if kind == b"_lib":
            continue
        payload_start = pos
        payload, pos = _read_chunk(blob, pos)
        if kind == b"cuda":
            pieces += [blob[cursor:payload_start], _chunk(_swap_cuda_payload(payload, source,
                                                                              fatbin))]
            cursor, swapped = pos, swapped + 1
    if pos != 8 + total or swapped != 1:
        raise CompileError(f"Expected one CUDA module in the packed library and found "
                           f"{swapped}; the library layout is not the one forgeline knows.")
    body = b"".join(pieces) + blob[cursor:]  # everything after the size header
    return struct.pack("<Q", len(body)) + body


def _packer_with_fatbin(source: bytes, fatbin: bytes):
    """An ``fpack_imports`` for export_library that embeds ``fatbin`` in place of ``source``.

    The rewritten blob goes in through the assembler's ``.incbin``, not a C array of hex bytes,
    so that a model whose weights run to gigabytes still links in seconds.
    """

    def pack(module, is_system_lib, prefix, workspace_dir):
        from tvm.runtime import _ffi_api

        if is_system_lib:
            raise CompileError("A system-lib CUDA build cannot embed a fatbin here; build a "
                               "shared library (the default).")
        blob = _ffi_api.ModulePackImportsToTensor(module).numpy().tobytes()
        blob_path = Path(workspace_dir) / f"{prefix}devc.bin"
        blob_path.write_bytes(_rewrite_library_bin(blob, source, fatbin))
        symbol = f"{prefix}__tvm_ffi__library_bin"
        asm_path = Path(workspace_dir) / f"{prefix}devc.S"
        asm_path.write_text(
            "\t.section .rodata\n"
            f"\t.globl {symbol}\n"
            f"\t.type {symbol}, @object\n"
            "\t.balign 16\n"
            f"{symbol}:\n"
            f"\t.incbin \"{blob_path}\"\n"
            f"\t.size {symbol}, .-{symbol}\n"
            "\t.section .note.GNU-stack,\"\",@progbits\n"
        )
        return str(asm_path)

    return pack


def _export_cuda(executable, spec: TargetSpec, out_dir: Path) -> tuple[bool, str, list[str]]:
    from tvm.support import nvcc
    from tvm.target import Target

    cuda_modules = _find_cuda_modules(executable.mod)
    if len(cuda_modules) != 1:
        raise CompileError(f"The CUDA build holds {len(cuda_modules)} CUDA modules, not one; "
                           "forgeline cannot package it.")
    source = str(cuda_modules[0].inspect_source("cuda"))
    (out_dir / CUDA_SOURCE_NAME).write_text(source)
    arch = spec.target["arch"]
    if shutil.which("nvcc") is None:
        executable.export_library(str(out_dir / LIB_NAME))
        return True, (f"nvcc is not on PATH, so {LIB_NAME} carries CUDA source "
                      f"({CUDA_SOURCE_NAME}) "
                      f"for {arch}, not a GPU binary: it cannot run here, and a GPU host compiles "
                      "it at load time with its own nvcc or NVRTC."), [CUDA_SOURCE_NAME]
    started = time.perf_counter()
    compute = arch.replace("sm_", "compute_")
    gencode = ["-gencode", f"arch={compute},code={arch}",  # SASS for the arch
               "-gencode", f"arch={compute},code={compute}"]  # PTX so newer GPUs can JIT it
    try:
        with Target(spec.target):  # nvcc.compile_cuda reads flags off the current target
            fatbin = bytes(nvcc.compile_cuda(source, target_format="fatbin", arch=gencode,
                                             compiler="nvcc"))
    except Exception as exc:  # noqa: BLE001
        raise CompileError(f"nvcc could not compile the generated CUDA source for {arch}: "
                           f"{error_summary(exc, last=True)}. The source is in {out_dir / CUDA_SOURCE_NAME}."
                           ) from exc
    logger.info("nvcc compiled %d KiB of CUDA source to a %d KiB fatbin in %.2f s.",
                len(source) // 1024, len(fatbin) // 1024, time.perf_counter() - started)
    executable.export_library(str(out_dir / LIB_NAME),
                              fpack_imports=_packer_with_fatbin(source.encode(), fatbin))
    here = ("" if cuda_compute_capabilities() else
            ", and this machine has none, so it was not run here")
    return False, (f"{LIB_NAME} embeds a CUDA fatbin for {arch} (SASS and PTX) built with nvcc; "
                   f"it needs a GPU host with an NVIDIA driver to run{here}."), [CUDA_SOURCE_NAME]


def build_tvm(onnx_path: Path, spec: TargetSpec, out_dir: Path, *,
              gemm_rows: int | None = None, precision: str = "fp32") -> TvmBuildResult:
    """Compile ``onnx_path`` for ``spec`` into ``out_dir/model.so`` (weights embedded).

    ``gemm_rows`` fixes the CPU GEMM tile height (cpu.matmul.DECODE_ROWS for a decode graph);
    ``precision`` is cpu.pipeline.apply_cpu_defaults's ("bf16": dense layers on AMX).
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if not onnx_path.is_file():
        raise ArtifactError(f"The ONNX model {onnx_path} does not exist; export the bundle first.")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    logger.info("Building %s for %s: %s", onnx_path, spec.tag, spec.target)
    with watch_interrupts(), native_log_to(logger):
        return _build(onnx_path, spec, out_dir, gemm_rows, precision, started)


def _build(onnx_path: Path, spec: TargetSpec, out_dir: Path, gemm_rows: int | None, precision: str,
           started: float) -> TvmBuildResult:
    tvm, mod = _import_onnx(onnx_path)
    unscheduled: list[str] = []
    executable = _compile(tvm, mod, spec, gemm_rows, unscheduled, precision)
    export_started = time.perf_counter()
    try:
        if spec.kind == "cuda":
            codegen_only, note, extra = _export_cuda(executable, spec, out_dir)
        else:
            executable.export_library(str(out_dir / LIB_NAME))
            codegen_only, note, extra = False, (
                f"{LIB_NAME} is a native library for {spec.target.get('mcpu')} "
                f"({spec.requires.get('arch')})."), []
    except CompileError:
        raise
    except Exception as exc:  # noqa: BLE001
        reraise_if_interrupted(exc)
        raise CompileError(f"Exporting the {spec.tag} library failed: {error_summary(exc, last=True)}. Check "
                           "that a C compiler (gcc) is on PATH.") from exc
    logger.info("Exported %s in %.2f s.", out_dir / LIB_NAME, time.perf_counter() - export_started)
    seconds = time.perf_counter() - started
    logger.info("Built %s in %.2f s: %s", spec.tag, seconds, note)
    return TvmBuildResult(lib_file=LIB_NAME, codegen_only=codegen_only, note=note,
                          seconds=seconds, extra_files=extra, unscheduled=unscheduled)


__all__ = ["TvmBuildResult", "build_tvm", "import_relax"]
