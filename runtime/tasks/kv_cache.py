"""GPT's KV cache for decoding: per-layer buffers written in place, one column per step.

The decode graph reads k and v of every layer as (B, nh, C, hs) and a mask (B, C), and returns
only the new token's k and v. This cache keeps those buffers in the backend's own memory (a TVM
tensor that numpy views through DLPack, or a numpy array ONNX Runtime reads without copying), so
a step passes the same buffers again and writes one column: O(new tokens) copied per step, not
the O(P) rebuild of a concatenated cache.

Capacity grows in chunks of ``CHUNK`` columns (one copy every CHUNK steps), so the masked room a
step attends over stays below CHUNK columns. Left padding puts every row's next token in the
same column, ``length``.
"""

from __future__ import annotations

import numpy as np

CHUNK = 32  # columns added when the cache is full: bounds masked work per step and copies per step


class KVCache:
    """k/v buffers for the decode graph, filled from the prefill's ``present`` (L, 2, B, nh, T, hs)."""

    def __init__(self, executor, present: np.ndarray, mask: np.ndarray, limit: int):
        self._executor = executor
        self._limit = limit  # the model's positions: the cache never needs more columns
        self._layers, _, self._batch, self._heads, self.length, self._head_size = present.shape
        self._allocate(_capacity(self.length + 1, limit))
        for i in range(self._layers):
            for j in range(2):
                self._views[2 * i + j][:, :, : self.length] = present[i, j]
        self._mask_view[:, : self.length] = mask

    @property
    def capacity(self) -> int:
        return self._mask_view.shape[1]

    def inputs(self) -> list:
        """past_mask, past_k_0, past_v_0, ...: the decode graph's inputs after input_ids."""
        return [self._mask, *self._handles]

    def append(self, new_kv: np.ndarray) -> None:
        """Write the new token's k and v (L, 2, B, nh, 1, hs) into column ``length``."""
        if self.length == self.capacity:
            self._grow()
        column = self.length
        for i in range(self._layers):
            for j in range(2):
                self._views[2 * i + j][:, :, column] = new_kv[i, j, :, :, 0]  # (B, nh, hs)
        self._mask_view[:, column] = 1  # the decoded token is always real
        self.length += 1

    def _allocate(self, capacity: int) -> None:
        shape = (self._batch, self._heads, capacity, self._head_size)
        pairs = [self._executor.shared_buffer(shape, "float32") for _ in range(2 * self._layers)]
        self._handles = [handle for handle, _ in pairs]
        self._views = [view for _, view in pairs]  # numpy views of the same memory
        self._mask, self._mask_view = self._executor.shared_buffer((self._batch, capacity), "int64")

    def _grow(self) -> None:
        old_views, old_mask = self._views, self._mask_view
        self._allocate(_capacity(self.length + CHUNK, self._limit))
        for new, old in zip(self._views, old_views):
            new[:, :, : self.length] = old[:, :, : self.length]
        self._mask_view[:, : self.length] = old_mask[:, : self.length]


def _capacity(columns: int, limit: int) -> int:
    """``columns`` rounded up to whole chunks, at most the model's position limit."""
    return min(limit, -(-columns // CHUNK) * CHUNK)

