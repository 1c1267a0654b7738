"""Run a TVM-compiled forgeline build with the TVM *runtime* only.

Nothing here imports torch, onnx or the TVM compiler (``tvm.relax``). A CPU build is loaded
through tvm_ffi and ``libtvm_runtime`` alone, without ``import tvm`` (tvm_io.py says why); a CUDA
build through ``import_tvm_runtime``, which loads only ``libtvm_runtime`` (plus CUDA's) and keeps
tvm_ffi's optional imports (torch, ml_dtypes) from loading. The environment variables that
select this are set only around the import and restored after, and the thread count goes
through TVM's thread-pool API, so nothing outlives the call.

Threads: a Relax VM is not thread-safe (concurrent calls corrupt its storage allocator and
crash), so one executor serialises its calls with a lock. A VM per calling thread was measured
against the lock and was no faster: TVM already spreads each call over all cores, so concurrent
calls only compete for them (README, "Threads").
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from forgeline.runtime.backends.cpu_kernels import register_cpu_kernels
from forgeline.runtime.errors import ArtifactError, ForgelineError, InputError, TargetMismatchError
from forgeline.runtime.host import cpu_core_count, cuda_compute_capabilities, cuda_driver_problem

from .environ import ENV_LOCK, allow_tvm_threads, scoped_environ
from .tvm_io import FfiCpuIO, PackageIO, without_optional_imports
from .tvm_params import PARAMS_NAME, bind_params
from ..params_file import ParamBinding

logger = logging.getLogger(__name__)

_THREAD_MODE_BIG_CORES = 1  # threading::ThreadGroup::kBig: all "big" cores, no pinning games
# TVM 0.27 keeps ~180 KiB of every load_module for the life of the process, even after the module
# is freed (measured: +181 KiB per load, +108 MB over 600 loads). So each library is loaded once
# per process per content (its sha256) and shared; a path whose content changed drops the old one.
_MODULES: dict[str, Any] = {}  # sha256 -> module
_LOADED_FROM: dict[str, str] = {}  # resolved artifact path -> sha256 of the library last loaded from it
_MODULES_LOCK = threading.Lock()


def load_library(load_module, path: Path, sha256: str | None = None):
    """The TVM module of the library at ``path``, loaded once per process per content.

    dlopen matches libraries by name, so loading ``path`` itself would hand back the old code after
    an in-place rebuild; the library is loaded from a private copy named by its sha256 instead
    (lib_cache.py). ``sha256``, the manifest's, must match the bytes that are loaded.
    """
    from .lib_cache import content_addressed_copy

    resolved = str(Path(path).resolve())
    digest, copy = content_addressed_copy(Path(resolved), sha256)
    with _MODULES_LOCK:
        for gone in [p for p in _LOADED_FROM if not os.path.exists(p)]:  # e.g. a compile's staging folder
            _LOADED_FROM.pop(gone)
        previous = _LOADED_FROM.get(resolved)
        if previous not in (None, digest) and not [p for p, d in _LOADED_FROM.items() if d == previous and p != resolved]:
            _MODULES.pop(previous, None)  # rebuilt in place: the old code is no longer wanted here
        _LOADED_FROM[resolved] = digest
        if digest not in _MODULES:
            _MODULES[digest] = load_module(str(copy))
        return _MODULES[digest]


def import_tvm_runtime():
    """Import ``tvm`` with only its runtime library, without importing torch; return the module.

    Must run before anything else imports tvm to take full effect. If tvm is already imported
    (e.g. by the compiler in the same process) that module is returned unchanged.
    """
    if "tvm" in sys.modules:
        import tvm.runtime.vm  # noqa: F401 - the VM class lives in a submodule

        return sys.modules["tvm"]
    started = time.perf_counter()

    def load():
        import tvm
        import tvm.runtime.vm  # noqa: F401 - not an attribute of tvm.runtime in runtime-only mode

        return tvm

    # Read by tvm/base.py and tvm_ffi at import only; restored so that a compile in a child
    # process (or this one, if it imports the compiler first) gets the whole of TVM.
    with ENV_LOCK, scoped_environ(TVM_USE_RUNTIME_LIB="1", TVM_FFI_DISABLE_TORCH_C_DLPACK="1"):
        tvm = without_optional_imports(load)
    logger.info("Imported the TVM runtime in %.2f s (runtime library only: %s).",
                time.perf_counter() - started, "tvm_compiler" not in tvm.base._LOADED_LIBS)
    return tvm


def _load_cuda_runtime(tvm) -> None:
    """Load TVM's CUDA runtime library, which runtime-only mode leaves out."""
    if tvm.runtime.enabled("cuda"):
        return
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    _preload_cudart()
    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
            package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir],
            mode="RTLD_LOCAL")
    except (OSError, RuntimeError) as exc:
        raise TargetMismatchError(
            f"TVM's CUDA runtime could not be loaded ({exc}); this host needs the NVIDIA driver "
            "and the CUDA 13 runtime libcudart.so.13 (pip install nvidia-cuda-runtime==13.0.*, "
            "or forgeline[cuda-build]) to run a CUDA build."
        ) from exc


def _preload_cudart() -> None:
    """Load libcudart.so.13 from NVIDIA's PyPI package when the system has none on its path:
    TVM 0.27's CUDA runtime links it, and a GPU host without a CUDA toolkit gets it from pip."""
    import ctypes
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / "cu13" / "lib" / "libcudart.so.13"
        if candidate.is_file():
            ctypes.CDLL(str(candidate), mode=ctypes.RTLD_GLOBAL)
            return


def _cuda_device_check(lib_path: Path, device_id: int) -> None:
    """A sentence naming what is missing when ``lib_path`` cannot run on CUDA device ``device_id``."""
    problem = cuda_driver_problem()
    if problem:
        raise TargetMismatchError(f"{lib_path} is a CUDA build, but {problem}; run it on a GPU "
                                  "host or use a CPU build.")
    count = len(cuda_compute_capabilities())
    if not 0 <= device_id < count:
        raise InputError(f"device_id={device_id} is not a CUDA device of this host, which has "
                         f"{count} (ids 0..{count - 1}).")


class TvmExecutor:
    """A compiled Relax VM library, ready to run on numpy arrays."""

    def __init__(self, lib_path: Path, device: str = "cpu", num_threads: int | None = None,
                 device_id: int = 0, sha256: str | None = None, params: ParamBinding | None = None):
        self.lib_path = Path(lib_path)
        if not self.lib_path.is_file():
            raise ArtifactError(
                f"The compiled library {self.lib_path} does not exist; compile the artifact for "
                "this target first (forgeline compile ... --target ...)."
            )
        if device not in ("cpu", "cuda"):
            raise InputError(f"device={device!r} is not supported; use 'cpu' or 'cuda'.")
        if device == "cuda":
            _cuda_device_check(self.lib_path, device_id)
        self.num_threads = num_threads or cpu_core_count()
        if self.num_threads < 1:
            raise InputError(f"num_threads={num_threads} must be at least 1.")
        self.device, self._device_id = device, device_id
        if device == "cpu":
            allow_tvm_threads(self.num_threads)
        if device == "cuda":
            tvm = import_tvm_runtime()
            _load_cuda_runtime(tvm)
            self._io = PackageIO(tvm, tvm.cuda(device_id))
        else:
            self._io = FfiCpuIO()  # no `import tvm`: see tvm_io.py
        self._ffi = ffi = self._io.ffi
        register_cpu_kernels()  # CPU builds may call forgeline.cpu.matmul (compile/cpu/pipeline.py)
        started = time.perf_counter()
        self._lock = threading.Lock()  # one call at a time: the VM is not thread-safe
        try:
            self._vm = load_library(self._io.load_module, self.lib_path, sha256)["vm_load_executable"]()
            self._vm["vm_initialization"](*self._io.init_args)
        except ForgelineError:
            raise  # a sentence already (the copy to load from could not be made, or did not match)
        except Exception as exc:  # noqa: BLE001 - TVM raises its own error classes
            raise ArtifactError(
                f"TVM could not load {self.lib_path} on {device} ({exc}); it may be truncated, "
                "built for another target, or built by another TVM version. Recompile it."
            ) from exc
        self._main = self._vm["main"]
        arity = int(self._vm["get_function_arity"]("main"))
        # Relax keeps the ONNX graph inputs' names and order as main's parameters.
        param_name = self._vm["get_function_param_name"]
        self.input_names = [str(param_name("main", i)) for i in range(arity)]
        self._param_files: tuple = ()
        self._params = self._bind(params)  # () or (the weights' tuple,), passed on every call
        self._tensor_type = ffi.Tensor
        self._configured_threads: set[int] = set()
        logger.info("Loaded %s on %s in %.2f s.", self.lib_path.name, device,
                    time.perf_counter() - started)

    def _bind(self, params: ParamBinding | None) -> tuple:
        takes_params = bool(self.input_names) and self.input_names[-1] == PARAMS_NAME
        if params is None and not takes_params:
            return ()
        if params is None or not takes_params:
            raise ArtifactError(f"{self.lib_path} {'takes' if takes_params else 'takes no'} weights from a parameter "
                                f"file, but its manifest {'lists none' if params is None else 'lists some'}; "
                                "the artifact is inconsistent, rebuild it.")
        self.input_names.pop()
        bound = bind_params(self._io, params, f"{self.device}:{self._device_id}")
        self._param_files = bound.files  # mapped while this executor lives (params_file.py)
        return (bound.array,)

    def _configure_threads(self) -> None:
        # TVM keeps one thread pool per calling thread, so configure each caller's pool once,
        # through its API: TVM_NUM_THREADS would outlive the call and reach child processes.
        caller = threading.get_ident()
        if self.device != "cpu" or caller in self._configured_threads:
            return
        config = self._ffi.get_global_func("runtime.config_threadpool")
        config(_THREAD_MODE_BIG_CORES, self.num_threads)
        in_use = int(self._ffi.get_global_func("runtime.NumThreads")())
        if in_use != self.num_threads:
            logger.warning("TVM runs %d threads, not the %d asked for.", in_use, self.num_threads)
        self._configured_threads.add(caller)

    def close(self) -> None:
        """Drop the VM and the library; the executor cannot run afterwards."""
        with self._lock:
            self._main = self._vm = None
            self._params, self._param_files = (), ()  # the last executor of a file unmaps it

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Run the model on inputs in ONNX graph order; return outputs in ONNX graph order."""
        with self._lock:
            if self._vm is None:
                raise ArtifactError(f"{self.lib_path} was closed; load the artifact again to run it.")
            self._configure_threads()
            return self._run_locked(arrays)

    def _run_locked(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        if len(arrays) != len(self.input_names):
            raise InputError(f"The model takes {self._describe_params()}, but {len(arrays)} were "
                             "given; pass them in ONNX graph order.")
        try:  # a TVM tensor (shared_buffer) is passed as is: no copy
            inputs = [a if isinstance(a, self._tensor_type) else self._io.to_device(np.asarray(a)) for a in arrays]
        except (TypeError, ValueError) as exc:
            raise InputError(f"An input could not become a TVM tensor ({exc}); pass numpy "
                             "arrays of the dtypes the model was exported with.") from exc
        try:
            result = self._main(*inputs, *self._params)
        except (TypeError, ValueError, IndexError, RuntimeError) as exc:
            message = str(exc).strip()
            # The VM checks every argument against the signature and names it (ErrorContext);
            # any other failure is not the caller's and propagates as is.
            if isinstance(exc, RuntimeError) and "ErrorContext(" not in message:
                raise
            given = ", ".join(f"{a.dtype}{list(a.shape)}" for a in arrays)
            detail = (message.splitlines()[-1] if message else type(exc).__name__).rstrip(".")
            raise InputError(
                f"The model rejected inputs ({given}): {detail}. Pass {self._describe_params()}"
                " in ONNX graph order with the exported dtypes and shapes."
            ) from exc
        return [self._io.to_numpy(t) for t in _flatten(result, self._tensor_type)]

    def shared_buffer(self, shape: tuple[int, ...], dtype: str):
        """A zeroed input tensor and a numpy view of its memory, for inputs that change a little per
        call (a KV cache): write through the view, pass the tensor, and nothing is copied. On CUDA
        there is no host view, so the numpy array itself is returned (copied in per call)."""
        if self.device != "cpu":
            array = np.zeros(shape, dtype=dtype)
            return array, array
        tensor = self._io.empty(shape, dtype)
        view = np.from_dlpack(tensor)  # the tensor's own memory
        view[...] = 0  # masked columns are multiplied by 0 in attention: they must hold no NaN
        return tensor, view

    def _describe_params(self) -> str:
        return f"{len(self.input_names)} array(s) ({', '.join(self.input_names)})"


def _flatten(result: Any, tensor_type: type) -> list[Any]:
    """A single-output VM result is one tensor; several come back as a (nested) tuple."""
    if isinstance(result, tensor_type):
        return [result]
    flat: list[Any] = []
    for item in result:
        flat.extend(_flatten(item, tensor_type))
    return flat


def library_executor(root, build, lib: str | None = None, **options):
    """A TvmExecutor for library ``lib`` (default: the build's main one) of ``build``, its
    parameters bound: for callers that pick a library themselves (benchmarks, bucket checks)."""
    from ..params_file import binding_for
    from ..paths import confined

    lib = lib or build.lib
    options.setdefault("device", build.device)
    return TvmExecutor(confined(root, lib, "a build library"), params=binding_for(root, build, lib), **options)


__all__ = ["TvmExecutor", "import_tvm_runtime", "library_executor"]
