"""Export a compiled CUDA executable: a fatbin in the library when nvcc is found, else source."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from forgeline.runtime.errors import CompileError, error_summary
from forgeline.runtime.host import cuda_compute_capabilities

from .fatbin import read_fatbin
from .library import packer_with_fatbin
from .nvcc import compile_fatbin, cuda_runtime_in_process, find_nvcc

logger = logging.getLogger(__name__)

CUDA_SOURCE_NAME = "model.cu"
NOT_CHECKED = "not checked on this host"  # the build record's words where no GPU ran it


@dataclass(frozen=True)
class CudaExport:
    codegen_only: bool  # True: the library carries CUDA source, not a GPU binary
    note: str  # one honest sentence on what was produced
    extra_files: list[str]
    kernels: list[str]  # kernel names in the generated code (and in the fatbin when built)


def find_cuda_modules(module) -> list:
    found, stack = [], [module]
    while stack:
        current = stack.pop()
        if current.kind == "cuda":
            found.append(current)
        stack.extend(current.imports)
    return found


def _kernel_names(source: str) -> list[str]:
    return sorted(set(re.findall(r'extern "C" __global__ void(?: __launch_bounds__\(\d+\))? (\w+)\(',
                                 source)))


def _check_fatbin(fatbin: bytes, arch: str, kernels: list[str]) -> None:
    """Every kernel of the source must be in the SASS for ``arch``: a sentence otherwise."""
    sm = int(arch.removeprefix("sm_").rstrip("af"))
    sass = [e for e in read_fatbin(fatbin) if e.kind == "sass" and e.arch == sm]
    missing = sorted(set(kernels) - (sass[0].kernels if sass else set()))
    if not sass or missing:
        raise CompileError(f"nvcc's fatbin lacks SASS for {arch} or kernels {missing[:5]}; the "
                           "CUDA toolchain is broken or too old for this arch.")


def export_cuda(executable, target: dict, lib_path: Path) -> CudaExport:
    """Export ``executable`` to ``lib_path`` (model.cu beside it); see the module docstring."""
    cuda_modules = find_cuda_modules(executable.mod)
    if len(cuda_modules) != 1:
        raise CompileError(f"The CUDA build holds {len(cuda_modules)} CUDA modules, not one; "
                           "forgeline cannot package it.")
    source = str(cuda_modules[0].inspect_source("cuda"))
    (lib_path.parent / CUDA_SOURCE_NAME).write_text(source)
    kernels, arch, nvcc = _kernel_names(source), target["arch"], find_nvcc()
    if cuda_runtime_in_process():  # a GPU host: codegen already compiled the kernels (nvcc.py)
        executable.export_library(str(lib_path))
        return CudaExport(False, f"{lib_path.name} holds the kernels for {arch} as TVM's codegen "
                          "compiled them on this GPU host.", [CUDA_SOURCE_NAME], kernels)
    if nvcc is None:
        executable.export_library(str(lib_path))
        return CudaExport(True, (
            f"no nvcc was found (install forgeline[cuda-build]), so {lib_path.name} carries CUDA "
            f"source ({CUDA_SOURCE_NAME}) for {arch}, not a GPU binary: it cannot run here, and a "
            "GPU host compiles it at load time with its own nvcc or NVRTC."), [CUDA_SOURCE_NAME], kernels)
    started = time.perf_counter()
    try:
        fatbin = compile_fatbin(source, arch, target, nvcc)
    except Exception as exc:  # noqa: BLE001
        raise CompileError(f"{nvcc.describe()} could not compile the generated CUDA source for "
                           f"{arch}: {error_summary(exc, last=True)}. The source is in "
                           f"{lib_path.parent / CUDA_SOURCE_NAME}.") from exc
    _check_fatbin(fatbin, arch, kernels)
    logger.info("%s compiled %d kernels (%d KiB of source) to a %d KiB fatbin in %.2f s.",
                nvcc.describe(), len(kernels), len(source) // 1024, len(fatbin) // 1024,
                time.perf_counter() - started)
    executable.export_library(str(lib_path), fpack_imports=packer_with_fatbin(source.encode(), fatbin))
    here = "" if cuda_compute_capabilities() else f"; {NOT_CHECKED}, which has no GPU"
    return CudaExport(False, (
        f"{lib_path.name} embeds a CUDA fatbin for {arch} (SASS and PTX, {len(kernels)} kernels) "
        f"built with {nvcc.describe()}; it needs a GPU host with an NVIDIA driver to run{here}."),
        [CUDA_SOURCE_NAME], kernels)


__all__ = ["CUDA_SOURCE_NAME", "CudaExport", "NOT_CHECKED", "export_cuda", "find_cuda_modules"]
