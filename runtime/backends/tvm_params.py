"""Bind a library's ``params`` tuple once at load: mapped tensors, handed to TVM without a copy.

On CPU each parameter is a numpy view of the mapped parameter file (runtime/params_file.py),
passed to TVM by DLPack: TVM's tensor points into the page cache's pages, and the 64-byte
alignment its kernels assume is checked on the way in. On CUDA each is copied to the device once.
Tensors are cached on the mapped file per device, so the main, prefill, decode and bucket
libraries of a build share them. The tuple is one TVM array, built here once and passed on
every call. The executor keeps the mapped files too (``BoundParams.files``): a file stays
mapped, and its tensors shared, while an executor bound to it lives, and no longer.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..params_file import PARAM_ALIGN, ParamBinding, ParamsFile

log = logging.getLogger(__name__)
PARAMS_NAME = "params"  # the trailing parameter of a library that takes its weights at load
_BIND_LOCK = threading.Lock()


@dataclass(frozen=True)
class BoundParams:
    """A library's ``params`` tuple and the mapped files it points into (held to keep them mapped)."""

    array: Any  # one TVM array of tensors, passed on every call
    files: tuple[ParamsFile, ...]


def bind_params(io, binding: ParamBinding, device: str) -> BoundParams:
    """The ``params`` tuple of ``binding`` as one TVM array of tensors on ``device``."""
    started = time.perf_counter()
    tensors, files = [], {}
    with _BIND_LOCK:
        for params_file, key in binding.arrays():
            tensor = params_file.bound.get((device, key))
            if tensor is None:
                tensor = io.param_tensor(params_file.array(key))
                params_file.bound[(device, key)] = tensor
            tensors.append(tensor)
            files[id(params_file)] = params_file
    log.info("Bound %d parameters on %s in %.3f s.", len(tensors), device, time.perf_counter() - started)
    return BoundParams(io.ffi.Array(tensors), tuple(files.values()))


__all__ = ["PARAMS_NAME", "PARAM_ALIGN", "BoundParams", "bind_params"]
