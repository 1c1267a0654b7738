"""Bind a library's ``params`` tuple once at load: mapped tensors, handed to TVM without a copy.

On CPU each parameter is a numpy view of the mapped parameter file (runtime/params_file.py),
passed to TVM by DLPack: TVM's tensor points into the page cache's pages, and the 64-byte
alignment its kernels assume is checked on the way in. On CUDA each is copied to the device once.
Tensors are cached on the mapped file per device, so the main, prefill, decode and bucket
libraries of a build share them. The tuple is one TVM array, built here once and passed on
every call.
"""

from __future__ import annotations

import logging
import threading
import time

from ..params_file import PARAM_ALIGN, ParamBinding

log = logging.getLogger(__name__)
PARAMS_NAME = "params"  # the trailing parameter of a library that takes its weights at load
_BIND_LOCK = threading.Lock()


def bind_params(io, binding: ParamBinding, device: str):
    """The ``params`` tuple of ``binding`` as one TVM array of tensors on ``device``."""
    started = time.perf_counter()
    tensors = []
    with _BIND_LOCK:
        for params_file, key in binding.arrays():
            tensor = params_file.bound.get((device, key))
            if tensor is None:
                tensor = io.param_tensor(params_file.array(key))
                params_file.bound[(device, key)] = tensor
            tensors.append(tensor)
    log.info("Bound %d parameters on %s in %.3f s.", len(tensors), device, time.perf_counter() - started)
    return io.ffi.Array(tensors)


__all__ = ["PARAMS_NAME", "PARAM_ALIGN", "bind_params"]
