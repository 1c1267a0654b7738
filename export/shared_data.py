"""One copy of the weights for every ONNX graph of a bundle.

The exporter writes each graph (main, prefill, decode, ...) with its own external-data file, and
each of those is a full copy of the weights. ``share_external_data`` points every external
initializer of every graph at bytes already in the bundle: into the eager checkpoint
(``weights.safetensors``) where an initializer is a checkpoint tensor byte for byte, else into one
shared file, ``model.onnx.data``, where each distinct tensor is stored once. The exporter folds each
Linear's transposed weight into a new initializer; where one is the transpose of a checkpoint
matrix, it becomes a Transpose node of that matrix (ONNX Runtime and TVM fold it back at load and
build time), so the graphs add almost nothing to the checkpoint. ONNX external data is a
(file, offset, length) triple, so a graph does not care which file it reads; ONNX Runtime and TVM's
importer read these files as they read the exporter's own.

Tensors are read and hashed one at a time, so this never holds more than one tensor in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SHARED_DATA_FILE = "model.onnx.data"
_ALIGN = 64  # bytes; lets a reader map a tensor aligned


def _checkpoint_index(checkpoint: Path) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int, list[int]]]]:
    """sha256 of each checkpoint tensor's bytes -> (offset in the file, length); and sha256 of each
    fp32 matrix's transpose -> (offset, length, its shape)."""
    index, transposed = {}, {}
    with open(checkpoint, "rb") as fh:
        length = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(length))
        start = 8 + length
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            fh.seek(start + begin)
            data = fh.read(end - begin)
            index.setdefault(hashlib.sha256(data).hexdigest(), (start + begin, end - begin))
            if entry["dtype"] == "F32" and len(entry["shape"]) == 2:
                flipped = np.frombuffer(data, np.float32).reshape(entry["shape"]).T.tobytes()
                transposed.setdefault(hashlib.sha256(flipped).hexdigest(), (start + begin, end - begin, entry["shape"]))
    return index, transposed


def _read(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise ValueError(f"{path} ends before the {length} bytes at offset {offset} that a graph reads")
    return data


def _point_at(tensor, location: str, offset: int, length: int) -> None:
    """Make ``tensor`` read its bytes from ``location`` (onnx's own helper wants them loaded first)."""
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _transpose_of(model, tensor, checkpoint: str, offset: int, length: int, shape: list[int]) -> None:
    """Make initializer ``tensor`` a Transpose node of the checkpoint matrix it is the transpose of
    (the exporter folds a Linear's weight.T into a new initializer)."""
    from onnx import helper

    source = model.graph.initializer.add()
    source.CopyFrom(tensor)
    source.name = f"{tensor.name}.checkpoint"
    del source.dims[:]
    source.dims.extend(shape)
    _point_at(source, checkpoint, offset, length)
    model.graph.node.insert(0, helper.make_node("Transpose", [source.name], [tensor.name], perm=[1, 0],
                                                name=f"{tensor.name}.transpose"))
    model.graph.initializer.remove(tensor)


def share_external_data(out: Path, graphs: list[str], checkpoint: str | None = None) -> None:
    """Rewrite the graphs ``graphs`` (file names in ``out``) to share one copy of their weights."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    out = Path(out)
    index, transposed = _checkpoint_index(out / checkpoint) if checkpoint else ({}, {})
    index = {key: (checkpoint, *where) for key, where in index.items()}
    scratch = out / (SHARED_DATA_FILE + ".partial")
    old_files: set[str] = set()
    stored = size = 0
    with open(scratch, "wb") as shared:
        for graph in graphs:
            model = onnx.load(str(out / graph), load_external_data=False)
            for tensor in list(model.graph.initializer):
                if not uses_external_data(tensor):
                    continue
                info = ExternalDataInfo(tensor)
                old_files.add(info.location)
                data = _read(out / info.location, int(info.offset or 0), int(info.length))
                key = hashlib.sha256(data).hexdigest()
                if key not in index and key in transposed and tensor.data_type == onnx.TensorProto.FLOAT:
                    _transpose_of(model, tensor, checkpoint, *transposed[key])
                    continue
                if key not in index:
                    shared.write(b"\0" * (-size % _ALIGN))
                    size += -size % _ALIGN
                    index[key] = (SHARED_DATA_FILE, size, len(data))
                    shared.write(data)
                    size += len(data)
                    stored += 1
                _point_at(tensor, *index[key])
            onnx.save(model, str(out / graph))
        shared.flush()
        os.fsync(shared.fileno())
    for name in old_files - {checkpoint}:
        (out / name).unlink(missing_ok=True)
    if stored:
        os.replace(scratch, out / SHARED_DATA_FILE)
    else:  # every tensor is a checkpoint tensor
        scratch.unlink()
    log.info("ONNX graphs %s share their weights: %d tensors (%.1f MB) in %s, the rest in %s", ", ".join(graphs),
             stored, size / 1e6, SHARED_DATA_FILE, checkpoint or "no checkpoint")


__all__ = ["SHARED_DATA_FILE", "share_external_data"]
