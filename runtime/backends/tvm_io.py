"""How the TVM executor reaches the runtime: tvm_ffi alone on CPU, the ``tvm`` package on CUDA.

A CPU build needs only ``libtvm_runtime`` and ``tvm_ffi``: the library, the Relax VM and the
thread pool are all reached through tvm_ffi's global functions and module calls. ``import tvm``
costs more than that on top: it defines Python classes for the compiler's objects, and in
runtime-only mode each one whose type is absent from the runtime library raises a C++ error
whose backtrace symbolizes every loaded library (~0.25 s of CPU here, the first time), and
tvm_ffi imports ``ml_dtypes`` (~0.6 s of CPU: it registers hundreds of numpy ufunc loops, and
numpy scans its loop list for each one). A CUDA build still goes through ``import tvm``, which
loads the CUDA runtime library and copies between host and device.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
from pathlib import Path

import numpy as np

from .environ import ENV_LOCK, scoped_environ

log = logging.getLogger(__name__)

# tvm_ffi does `try: import torch` and `try: import ml_dtypes`: block both while it is imported
# when neither is loaded yet. No forgeline input or output is bfloat16 or float8 in numpy.
OPTIONAL_IMPORTS_OF_TVM_FFI = ("torch", "ml_dtypes")
_CPU, _POOLED_ALLOCATOR = 1, 2  # kDLCPU; the Relax VM's pooled allocator (tvm.runtime.vm)
_ffi = None


def without_optional_imports(load):
    """Run ``load()`` with tvm_ffi's optional imports (torch, ml_dtypes) made to fail fast."""
    blocked = [name for name in OPTIONAL_IMPORTS_OF_TVM_FFI if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None
    try:
        return load()
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def load_ffi_runtime():
    """tvm_ffi with libtvm_runtime loaded (once), without importing ``tvm``; returns tvm_ffi."""
    global _ffi
    if _ffi is None:
        started = time.perf_counter()
        with ENV_LOCK, scoped_environ(TVM_FFI_DISABLE_TORCH_C_DLPACK="1"):  # read at import only
            _ffi = without_optional_imports(_load_runtime_library)
        log.info("Loaded libtvm_runtime through tvm_ffi in %.2f s.", time.perf_counter() - started)
    return _ffi


def _load_runtime_library():
    import tvm_ffi
    from tvm_ffi.libinfo import load_lib_ctypes

    if "tvm" not in sys.modules:  # `import tvm` loads it itself
        spec = importlib.util.find_spec("tvm")  # finds the package without importing it
        if spec is None or spec.origin is None:
            from ..errors import MissingDependencyError

            raise MissingDependencyError("the TVM backend needs apache-tvm; install it or use backend='ort'.")
        lib_dir = Path(spec.origin).parent / "lib"
        load_lib_ctypes("tvm", "tvm_runtime", "RTLD_GLOBAL", extra_lib_paths=[lib_dir])
    return tvm_ffi


class FfiCpuIO:
    """CPU tensors through tvm_ffi: 64-byte aligned TVM allocations, numpy views through DLPack."""

    init_args = (_CPU, 0, _POOLED_ALLOCATOR)  # vm_initialization: device type, id, allocator

    def __init__(self):
        self.ffi = load_ffi_runtime()
        self._device = self.ffi.device("cpu", 0)
        self._alloc = self.ffi.get_global_func("runtime.TVMTensorAllocWithScope")

    def load_module(self, path: Path):
        return self.ffi.load_module(str(path))

    def empty(self, shape, dtype: str):
        return self._alloc(self.ffi.Shape([int(d) for d in shape]), self.ffi.dtype(dtype), self._device, None)

    def to_device(self, array: np.ndarray):
        tensor = self.empty(array.shape, str(array.dtype))
        np.from_dlpack(tensor)[...] = array  # one copy into TVM's aligned memory
        return tensor

    def param_tensor(self, array: np.ndarray):
        """``array`` (a view of a mapped parameter file) as a TVM tensor on the same memory."""
        return self.ffi.from_dlpack(array, require_alignment=64, require_contiguous=True)

    @staticmethod
    def to_numpy(tensor) -> np.ndarray:
        return np.from_dlpack(tensor)  # the output's own memory, kept alive by the view


class PackageIO:
    """Tensors through the ``tvm`` package (CUDA builds: device memory, host copies)."""

    def __init__(self, tvm, device):
        self.ffi = sys.modules["tvm_ffi"]
        self._tvm = tvm
        self._device = device
        self.init_args = (device.dlpack_device_type(), device.index, _POOLED_ALLOCATOR, _CPU, 0, _POOLED_ALLOCATOR)

    def load_module(self, path: Path):
        return self._tvm.runtime.load_module(str(path))

    def empty(self, shape, dtype: str):
        return self._tvm.runtime.empty(shape, dtype, self._device)

    def to_device(self, array: np.ndarray):
        return self._tvm.runtime.tensor(np.ascontiguousarray(array), self._device)

    def param_tensor(self, array: np.ndarray):
        """A device copy of ``array``, made once per parameter at load."""
        return self.to_device(array)

    @staticmethod
    def to_numpy(tensor) -> np.ndarray:
        return np.asarray(tensor.numpy())
