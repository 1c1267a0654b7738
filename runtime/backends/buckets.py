"""Serve each call from a tuned bucket build when its shapes match one exactly, else the dynamic one.

A build's ``buckets`` (manifest) are static-shape libraries tuned for, e.g., batch 1 x seq 128. A
call whose symbolic dims all equal one bucket's dims runs there; any other shape runs on the
dynamic ``model.so``. Libraries load on first use, so an application that only ever sends one
shape loads one library.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from ..format import BuildRecord, TensorSpec, symbolic_sizes

log = logging.getLogger(__name__)

DYNAMIC = "dynamic"  # the name of the fallback in ``last_build``


class BucketedExecutor:
    """Run inputs (graph order) on the bucket build that fits them, or on the dynamic build."""

    def __init__(self, root: Path, build: BuildRecord, inputs: list[TensorSpec], device: str = "cpu",
                 device_id: int = 0):
        self._root = Path(root)
        self._device, self._device_id = device, device_id
        self._inputs = inputs
        self._build = build
        self._libs = {DYNAMIC: build.lib}
        self._by_dims: dict[tuple, str] = {}  # sorted (dim, size) pairs -> bucket key
        for key, bucket in build.buckets.items():
            self._libs[key] = bucket["lib"]
            self._by_dims[tuple(sorted(bucket["dims"].items()))] = key
        self._executors: dict[str, object] = {}
        self._lock = threading.Lock()  # opening a library is not done twice by racing threads
        self.last_build: str | None = None  # DYNAMIC or the bucket key that served the last call

    @property
    def buckets(self) -> list[str]:
        return [key for key in self._libs if key != DYNAMIC]

    def choose(self, arrays: list[np.ndarray]) -> str:
        """The bucket whose dims equal the call's symbolic dims, else DYNAMIC."""
        dims = symbolic_sizes(self._inputs, arrays)
        return self._by_dims.get(tuple(sorted(dims.items())), DYNAMIC)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        key = self.choose(arrays)
        self.last_build = key
        return self._executor(key).run(arrays)

    def _executor(self, key: str):
        with self._lock:
            if key not in self._executors:
                from ..params_file import binding_for
                from ..paths import confined
                from .tvm import TvmExecutor

                log.info("loading %s build %s", "the dynamic" if key == DYNAMIC else "bucket", self._libs[key])
                path = confined(self._root, self._libs[key], f"the {key} library")
                params = binding_for(self._root, self._build, self._libs[key])
                self._executors[key] = TvmExecutor(path, device=self._device, device_id=self._device_id,
                                                   params=params)
            return self._executors[key]

    def close(self) -> None:
        with self._lock:
            for executor in self._executors.values():
                executor.close()
            self._executors.clear()


__all__ = ["DYNAMIC", "BucketedExecutor"]
