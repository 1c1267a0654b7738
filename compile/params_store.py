"""Write a build's lifted parameters into one content-addressed safetensors file.

Each tensor's key is the sha256 of its dtype, shape and bytes, so equal tensors of the main,
prefill, decode and bucket libraries are stored once, whatever their names in the graphs. The
tensors are streamed to a scratch file as they come (a build's arrays are freed as soon as its
library is exported), and ``finish`` writes the file: 8 bytes of header length, the JSON header
padded with spaces, then the data, each tensor on a 64-byte boundary (runtime/params_file.py
reads it back with numpy alone and maps it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from forgeline.runtime.params_file import NUMPY_TO_SAFETENSORS, PAD_PREFIX, PARAM_ALIGN

KEY_HEX = 32  # 128 bits of sha256: collisions are out of reach, manifests stay small


def param_key(array: np.ndarray) -> str:
    """The content address of a tensor: its dtype, shape and bytes."""
    digest = hashlib.sha256(f"{array.dtype.str}{list(array.shape)}".encode())
    digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()[:KEY_HEX]


class ParamStoreWriter:
    """Collects tensors (deduplicated by key) and writes them as one aligned safetensors file."""

    def __init__(self, path: Path, known: set[str] = frozenset()):
        self.path = Path(path)
        self._scratch = self.path.with_name(self.path.name + ".partial")
        self._data = None  # opened with the first tensor: a build killed before it leaves no file
        self._entries: dict[str, tuple[str, list[int], int, int]] = {}  # key -> dtype, shape, begin, end
        self._known = set(known)  # stored elsewhere already (the build's shared file): not written
        self._size = 0

    def add(self, arrays: list[np.ndarray]) -> list[str]:
        """Store ``arrays`` (each once); their keys, in order."""
        keys = []
        for array in arrays:
            key = param_key(array)
            keys.append(key)
            if key in self._entries or key in self._known:
                continue
            dtype = NUMPY_TO_SAFETENSORS.get(array.dtype.name)
            if dtype is None:
                raise ValueError(f"parameters of dtype {array.dtype} cannot be stored in safetensors")
            if self._data is None:
                self._data = open(self._scratch, "wb")
            self._pad_to(PARAM_ALIGN)
            begin = self._size
            self._data.write(memoryview(np.ascontiguousarray(array)).cast("B"))
            self._size += array.nbytes
            self._entries[key] = (dtype, [int(d) for d in array.shape], begin, self._size)
        return keys

    @property
    def stored(self) -> int:
        """How many distinct tensors this file holds."""
        return len(self._entries)

    def _pad_to(self, align: int) -> None:
        gap = -self._size % align
        if gap:
            self._data.write(b"\0" * gap)
            self._size += gap

    def finish(self) -> bool:
        """Write the file; False (and nothing written) when no tensor was added."""
        if self._data is None:
            return False
        self._data.close()
        header = self._header()
        with open(self.path, "wb") as out, open(self._scratch, "rb") as data:
            out.write(len(header).to_bytes(8, "little"))
            out.write(header)
            shutil.copyfileobj(data, out, 8 << 20)
            out.flush()
            os.fsync(out.fileno())
        self._scratch.unlink()
        return True

    def abandon(self) -> None:
        if self._data is not None:
            self._data.close()
        self._scratch.unlink(missing_ok=True)

    def _header(self) -> bytes:
        """The JSON header, padded so that the data starts on a 64-byte boundary of the file."""
        header: dict = {"__metadata__": {"format": "pt", "keys": "sha256 of dtype, shape and bytes"}}
        cursor = 0
        for index, (key, (dtype, shape, begin, end)) in enumerate(self._entries.items()):
            if begin > cursor:  # safetensors wants the data covered with no holes
                header[f"{PAD_PREFIX}{index}"] = {"dtype": "U8", "shape": [begin - cursor],
                                                  "data_offsets": [cursor, begin]}
            header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
            cursor = end
        text = json.dumps(header, separators=(",", ":")).encode()
        return text + b" " * (-(8 + len(text)) % PARAM_ALIGN)


__all__ = ["KEY_HEX", "ParamStoreWriter", "param_key"]
