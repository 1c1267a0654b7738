"""Find the CUDA compiler and run it: NVIDIA's PyPI nvcc first, then whatever is on PATH.

TVM 0.27's CUDA runtime links ``libcudart.so.13``, so builds use CUDA 13's nvcc. The ``cuda-build``
extra installs it from PyPI (``nvidia-cuda-nvcc`` and the headers it needs, into
``site-packages/nvidia/cu13``), which makes a build independent of the machine image. TVM's
``compile_cuda`` runs the program named ``nvcc`` on PATH, so the chosen nvcc's folder is put first
on PATH around that one call and PATH is restored afterwards.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

NVCC_ENV = "FORGELINE_NVCC"  # an explicit nvcc to use, ahead of the PyPI one and PATH
# Where NVIDIA's wheels put nvcc inside the `nvidia` namespace package, newest layout first.
_WHEEL_LAYOUTS = ("cu13/bin/nvcc", "cuda_nvcc/bin/nvcc")
_PATH_LOCK = threading.Lock()  # PATH is process-wide: one nvcc call at a time changes it


@dataclass(frozen=True)
class Nvcc:
    path: Path
    origin: str  # "FORGELINE_NVCC", "PyPI package nvidia-cuda-nvcc" or "PATH"
    version: str  # "13.0" as `nvcc --version` prints it, "" when it did not answer

    def describe(self) -> str:
        return f"nvcc {self.version or '(version unknown)'} from {self.origin} ({self.path})"


def _wheel_nvcc() -> Path | None:
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for layout in _WHEEL_LAYOUTS:
            candidate = Path(root) / layout
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    return None


def _version(path: Path) -> str:
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else ""


def find_nvcc() -> Nvcc | None:
    """The nvcc a build uses: $FORGELINE_NVCC, else the PyPI package's, else PATH's; None if none."""
    explicit = os.environ.get(NVCC_ENV)
    if explicit:
        return Nvcc(Path(explicit), NVCC_ENV, _version(Path(explicit)))
    wheel = _wheel_nvcc()
    if wheel is not None:
        return Nvcc(wheel, "PyPI package nvidia-cuda-nvcc", _version(wheel))
    on_path = shutil.which("nvcc")
    return Nvcc(Path(on_path), "PATH", _version(Path(on_path))) if on_path else None


@contextmanager
def nvcc_first_on_path(nvcc: Nvcc):
    """PATH with ``nvcc``'s folder first, for the duration of the block only."""
    with _PATH_LOCK, _overridden("PATH", os.pathsep.join([str(nvcc.path.parent), os.environ.get("PATH", "")])):
        yield


@contextmanager
def _overridden(name: str, value: str):
    """``os.environ[name] = value`` for the block, then as it was (unset if it was unset)."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def cuda_runtime_in_process() -> bool:
    """Whether TVM's CUDA runtime is loaded here: then codegen compiles kernels itself (GPU host)."""
    import tvm_ffi

    return tvm_ffi.get_global_func("ffi.Module.create.cuda", allow_missing=True) is not None


@contextmanager
def nvcc_for_tvm_codegen():
    """Where TVM's CUDA runtime is loaded, its codegen calls ``tvm_callback_cuda_compile``, which
    defaults to NVRTC (needing cuda-bindings); make it use the chosen nvcc for this block."""
    nvcc = find_nvcc() if cuda_runtime_in_process() else None
    if nvcc is None:
        yield
        return
    with _overridden("TVM_CUDA_COMPILE_MODE", "nvcc"), nvcc_first_on_path(nvcc):
        yield


def compile_fatbin(source: str, arch: str, target, nvcc: Nvcc) -> bytes:
    """nvcc ``source`` to a fatbin holding SASS for ``arch`` and its PTX (for newer GPUs to JIT).

    Uncompressed, so that the kernels in it can be listed without NVIDIA's tools.
    """
    from tvm.support import nvcc as tvm_nvcc
    from tvm.target import Target

    compute = arch.replace("sm_", "compute_")
    gencode = ["-gencode", f"arch={compute},code={arch}", "-gencode", f"arch={compute},code={compute}"]
    target = target if isinstance(target, Target) else Target(target)
    with target, nvcc_first_on_path(nvcc):  # compile_cuda reads flags off the target
        return bytes(tvm_nvcc.compile_cuda(source, target_format="fatbin", arch=gencode,
                                           options=["--no-compress"], compiler="nvcc"))


__all__ = ["NVCC_ENV", "Nvcc", "compile_fatbin", "cuda_runtime_in_process", "find_nvcc",
           "nvcc_first_on_path", "nvcc_for_tvm_codegen"]
