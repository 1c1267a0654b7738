"""Host kernels that CPU builds call by name: fp32 matmul on numpy's bundled OpenBLAS.

A CPU build made with ``cpu.pipeline.apply_cpu_defaults(..., offload_matmul=True)`` hands every
fp32 matmul to the packed function ``MATMUL_FUNC`` instead of compiling it. That was the default
until the GEMM schedule (compile/cpu/matmul.py) beat it on whole models by using both cores and
fusing the epilogues; it remains an option, and artifacts built that way still load.
numpy is already the runtime's one hard dependency, so the light runtime gains nothing to
install; ``register_cpu_kernels`` must run before a build that uses them is loaded
(``TvmExecutor`` does it).

Shapes follow numpy/Relax matmul semantics (batch dims broadcast), so symbolic batch and
sequence sizes need nothing special: the VM allocates the output and passes it in.

Threads: these GEMMs run on ONE OpenBLAS thread by default (``FORGELINE_BLAS_THREADS`` raises
it), set thread-locally so the application's own numpy is untouched. OpenBLAS workers busy-wait
between calls; next to TVM's thread pool, or on a loaded machine, two of them made a 0.9 ms GEMM
take 32 ms (measured on the 2-core benchmark machine), while one thread loses at most 2x on a
quiet machine.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os

import numpy as np

logger = logging.getLogger(__name__)

MATMUL_FUNC = "forgeline.cpu.matmul"  # the name compiled CPU builds call (destination-passing)

_registered = False
_DEFAULT_BLAS_THREADS = 1  # see the module doc


def _openblas_thread_setter():
    """numpy's bundled OpenBLAS ``openblas_set_num_threads_local``, or None when absent."""
    libs_dir = os.path.dirname(np.__file__) + ".libs"  # where numpy's wheels put OpenBLAS
    for path in sorted(glob.glob(os.path.join(libs_dir, "libscipy_openblas*.so*"))):
        try:
            setter = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        setter.restype, setter.argtypes = ctypes.c_int, [ctypes.c_int]
        return setter
    return None


def _blas_threads() -> int:
    value = os.environ.get("FORGELINE_BLAS_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else _DEFAULT_BLAS_THREADS


def matmul_into(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out[...] = a @ b, folding a broadcast batch so that OpenBLAS sees few, large GEMMs.

    The MoE experts multiply x (G, E, n, K) by stacked weights w (E, K, N) with n as small as
    1 (a decoder group is one position across the batch): numpy would issue G*E tiny GEMVs.
    Moving G next to n turns that into E GEMMs of (G*n, K) x (K, N).
    """
    lead = a.ndim - b.ndim  # batch dims of `a` that `b` broadcasts over
    if b.ndim >= 3 and lead >= 1 and a.shape[lead:-2] == b.shape[:-2]:
        group = int(np.prod(a.shape[:lead]))
        batch, (m, k), n = b.shape[:-2], a.shape[-2:], b.shape[-1]
        nb = int(np.prod(batch))
        folded = np.ascontiguousarray(  # (nb, group * m, K)
            np.moveaxis(a.reshape(group, nb, m, k), 0, 1)).reshape(nb, group * m, k)
        result = np.matmul(folded, b.reshape(nb, k, n))  # (nb, group * m, N)
        out[...] = np.moveaxis(result.reshape(nb, group, m, n), 0, 1).reshape(out.shape)
        return
    np.matmul(a, b, out=out)


def _make_packed():
    setter, threads = _openblas_thread_setter(), _blas_threads()

    def matmul_packed(a, b, out) -> None:
        # DLPack views: no copies of the TVM tensors on the way in or out.
        previous = setter(threads) if setter else None
        try:
            matmul_into(np.from_dlpack(a), np.from_dlpack(b), np.from_dlpack(out))
        finally:
            if setter:
                setter(previous)

    return matmul_packed, setter is not None, threads


def register_cpu_kernels() -> None:
    """Register the host kernels with TVM's global function table (once per process)."""
    global _registered
    if _registered:
        return
    import tvm_ffi

    packed, found, threads = _make_packed()
    tvm_ffi.register_global_func(MATMUL_FUNC, packed, override=True)
    _registered = True
    logger.debug("Registered %s (numpy %s, OpenBLAS threads %s).", MATMUL_FUNC, np.__version__,
                 threads if found else "numpy's default")


__all__ = ["MATMUL_FUNC", "matmul_into", "register_cpu_kernels"]
