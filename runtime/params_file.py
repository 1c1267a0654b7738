"""The parameter file of a TVM build: safetensors, content-addressed, read with numpy alone.

``tvm/<tag>/params.safetensors`` holds the weights that the build's libraries (main, prefill,
decode, tuned buckets) take as their trailing ``params`` tuple, each tensor once: its key is the
sha256 of its dtype, shape and bytes (compile/params_store.py writes it). Every tensor starts on
a 64-byte boundary of the file (the header is padded with spaces, gaps are ``__pad`` entries), so
a view of a memory map is aligned as TVM's kernels assume.

How a process holds the tensors (``FORGELINE_WEIGHTS``):

- ``copy`` (the default): the file is read once into the process's own anonymous memory, with huge
  pages advised. Kernels stream the weights from it as fast as from weights embedded in a library.
- ``map``: ``np.memmap(mode="c")`` (private, copy-on-write) shares the page cache's pages between
  every process that loads the artifact and never writes to the file: N processes hold one copy.
  Streaming weights from the page cache's scattered 4 KB pages measured ~25% slower on a 2-core
  cloud VM (gpt base, one token: 58 against 46 ms), so mapping is for many processes serving one
  artifact, where memory matters more than that.

Either way no tensor is copied again: each is a view handed to TVM by DLPack. The manifest's
sha256 of the file is checked by streaming it before it is read or mapped (format.py).

A file's tensors stay while an executor bound to them lives (each holds its ``ParamsFile``): when
the last one is closed or released (``Model.close``, ``Model.release``), the buffer or map and the
tensors bound to it go, and the process no longer counts them.
"""

from __future__ import annotations

import json
import mmap
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError

PARAMS_FILE = "params.safetensors"
PARAM_ALIGN = 64  # bytes: TVM's kernels assume 64-byte aligned tensors
PAD_PREFIX = "__pad"  # filler entries that keep the next tensor aligned
MAX_HEADER_BYTES = 64 << 20  # a header is kilobytes; refuse to parse a giant one
# safetensors dtype names <-> numpy; bf16 is stored as its uint16 bits (TVM's legalized bf16).
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32",
                      "U16": "uint16", "U8": "uint8", "BOOL": "bool"}
NUMPY_TO_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPES.items()}
WEIGHTS_ENV = "FORGELINE_WEIGHTS"  # how a process holds a build's weights: WEIGHTS_MODES
WEIGHTS_MODES = ("copy", "map")
READ_CHUNK = 64 << 20


@dataclass(frozen=True)
class TensorEntry:
    dtype: str  # numpy dtype name
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int


def parse_header(path: Path) -> tuple[dict[str, TensorEntry], int]:
    """The tensors of the safetensors file at ``path`` (absolute offsets) and the file size."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise ArtifactError(f"{path} is {size} bytes, too short for a safetensors header; rebuild the artifact.")
        length = int.from_bytes(prefix, "little")
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise ArtifactError(f"{path} declares a {length}-byte header in a {size}-byte file; it is corrupt.")
        try:
            header = json.loads(fh.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ArtifactError(f"{path} has a header that is not JSON ({exc}); rebuild the artifact.") from exc
    if not isinstance(header, dict):
        raise ArtifactError(f"{path} has a header that is not a JSON object; rebuild the artifact.")
    start = 8 + length
    entries = {}
    for key, value in header.items():
        if key == "__metadata__" or key.startswith(PAD_PREFIX):
            continue
        entries[key] = _entry(path, key, value, start, size)
    return entries, size


def _entry(path: Path, key: str, value: Any, start: int, size: int) -> TensorEntry:
    """One header entry, checked: known dtype, sizes that add up, inside the file, aligned."""
    try:
        dtype = SAFETENSORS_DTYPES[value["dtype"]]
        shape = tuple(int(d) for d in value["shape"])
        begin, end = (int(v) for v in value["data_offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: tensor {key!r} has a malformed header entry ({exc}).") from exc
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if min(shape, default=0) < 0 or end - begin != expected or begin < 0 or start + end > size:
        raise ArtifactError(f"{path}: tensor {key!r} ({dtype}{list(shape)}) has offsets [{begin}, {end}) that "
                            f"do not fit its size or the file; the file is corrupt.")
    if (start + begin) % PARAM_ALIGN:
        raise ArtifactError(f"{path}: tensor {key!r} does not start on a {PARAM_ALIGN}-byte boundary, so it "
                            "cannot be mapped for TVM; rebuild the artifact with this forgeline.")
    return TensorEntry(dtype, shape, start + begin, start + end)


class ParamsFile:
    """One parameter file, read or mapped (``weights_mode``): numpy views of its tensors by key."""

    def __init__(self, path: Path, version: tuple[int, int, int] = (0, 0, 0)):
        self.path = Path(path)
        self.version = version  # (inode, size, mtime_ns) when it was mapped
        self.entries, size = parse_header(self.path)
        self.mode = weights_mode()
        self._map = _mapped(self.path, size) if self.mode == "map" else _read(self.path, size)
        self.bound: dict[tuple[Any, str], Any] = {}  # (device, key) -> runtime tensor (tvm.py)

    def array(self, key: str) -> np.ndarray:
        entry = self.entries.get(key)
        if entry is None:
            raise ArtifactError(f"{self.path} holds no parameter {key[:16]}…, which the manifest lists for a "
                                "library; the artifact is inconsistent, rebuild it.")
        return self._map[entry.begin:entry.end].view(entry.dtype).reshape(entry.shape)


def weights_mode() -> str:
    """``FORGELINE_WEIGHTS``: "copy" (the default) or "map"; see the module docstring."""
    mode = os.environ.get(WEIGHTS_ENV, "copy").strip().lower() or "copy"
    if mode not in WEIGHTS_MODES:
        raise ArtifactError(f"{WEIGHTS_ENV}={mode!r} is not one of {', '.join(WEIGHTS_MODES)}; unset it or pick one.")
    return mode


def _mapped(path: Path, size: int):
    """Private and copy-on-write: the pages are the page cache's, shared by every process."""
    return np.memmap(path, dtype=np.uint8, mode="c", shape=(size,)) if size else None


def _read(path: Path, size: int):
    """The file read into this process's own memory: anonymous pages, huge where the kernel grants
    them (madvise), physically contiguous where it can; page-aligned, so every tensor keeps its
    64-byte alignment."""
    if not size:
        return None
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buffer.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel without transparent huge pages: 4 KB pages then
            pass
    view, done = memoryview(buffer), 0
    with open(path, "rb") as fh:
        while done < size:
            got = fh.readinto(view[done:done + READ_CHUNK])
            if not got:
                raise ArtifactError(f"{path} ended after {done} of {size} bytes while it was read; rebuild the artifact.")
            done += got
    return np.frombuffer(buffer, dtype=np.uint8)


# Only executors keep a file's tensors (weak values): the last one closed frees them.
_OPEN: weakref.WeakValueDictionary[str, ParamsFile] = weakref.WeakValueDictionary()
_OPEN_LOCK = threading.Lock()


def open_params(path: Path) -> ParamsFile:
    """The mapped file at ``path``, mapped once per process per version of the file while anything
    holds it (an executor bound to it)."""
    resolved = str(Path(path).resolve())
    st = os.stat(resolved)
    version = (st.st_ino, st.st_size, st.st_mtime_ns)
    with _OPEN_LOCK:
        mapped = _OPEN.get(resolved)
        if mapped is None or mapped.version != version or mapped.mode != weights_mode():
            mapped = ParamsFile(Path(resolved), version)
            _OPEN[resolved] = mapped
        return mapped


@dataclass(frozen=True)
class ParamBinding:
    """What one library takes as its ``params`` tuple: keys in order, and the files holding them."""

    files: tuple[Path, ...]  # absolute, confined to the artifact
    keys: tuple[str, ...]

    def arrays(self) -> list[tuple[ParamsFile, str]]:
        """(file, key) of every parameter in order; the first file holding a key serves it."""
        opened = [open_params(path) for path in self.files]
        found = []
        for key in self.keys:
            owner = next((f for f in opened if key in f.entries), opened[0])  # opened[0] names the miss
            owner.array(key)  # a key no file holds is refused here, at load, not at the first call
            found.append((owner, key))
        return found




def binding_for(root: Path, build: Any, lib: str) -> ParamBinding | None:
    """The parameters library ``lib`` of ``build`` (a format.BuildRecord) takes; None: it takes none."""
    from .paths import confined

    bucket = next((b for b in build.buckets.values() if b.get("lib") == lib), None)
    keys = bucket.get("params", []) if bucket is not None else build.lib_params.get(lib, [])
    if not keys:
        return None
    names = [bucket.get("params_file", "")] if bucket is not None else []
    files = [confined(root, name, "a parameter file") for name in [*names, build.params_file] if name]
    if not files:
        raise ArtifactError(f"{lib} takes {len(keys)} parameters but build {build.tag} lists no parameter "
                            "file; the artifact is inconsistent, rebuild it.")
    return ParamBinding(tuple(files), tuple(keys))


__all__ = ["PARAMS_FILE", "PARAM_ALIGN", "PAD_PREFIX", "NUMPY_TO_SAFETENSORS", "ParamBinding", "ParamsFile",
           "SAFETENSORS_DTYPES", "TensorEntry", "binding_for", "open_params", "parse_header"]
