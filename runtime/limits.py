"""The bounds the runtime enforces, and why they can be trusted though manifest.json is not hashed.

- **Positions.** ``max_positions`` and the sequence limits in ``dim_limits`` live in the manifest,
  which anyone can edit without breaking a hash; a compiled kernel handed more positions than its
  table has reads past it (garbage, or a segfault). So at load they are checked against the
  position tables of ``weights.safetensors``, whose sha256 the manifest's ``files`` holds and
  ``verify_files`` has just checked: a mismatch is refused.
- **Batch.** A call carries at most ``dim_limits["batch"]`` sequences, ``DEFAULT_MAX_BATCH``
  when the manifest states none; a manifest may raise it up to ``MAX_BATCH_CEILING``, no further.
- **Input files.** ``--inputs`` .npz members declare their shapes in their .npy headers; those are
  read (a few hundred bytes of each member) and checked against the limits before any array is
  decompressed, so a small archive that inflates to gigabytes is refused unread.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import ArtifactError, InputError
from .format import WEIGHTS_CONFIG_KEY, WEIGHTS_FILE, Manifest, TensorSpec

DEFAULT_MAX_BATCH = 256  # sequences per call; more go in several calls (the bench and tuned buckets use <= 64)
MAX_BATCH_CEILING = 65536  # a manifest's batch limit above this is refused as corrupt
# Tensors of weights.safetensors that are position tables (rows = positions): GPT, BERT, the
# Transformer's learned positions; each family's define/ module names them so.
POSITION_TABLES = ("wpe.weight", "position_embeddings.weight", "pos.weight")
MAX_SAFETENSORS_HEADER = 100 << 20


def batch_limit(limits: Mapping[str, int | None]) -> int:
    """The batch limit of an artifact's ``dim_limits``: its own (checked), else the default."""
    limit = limits.get("batch")
    if limit is None:
        return DEFAULT_MAX_BATCH
    if not 1 <= limit <= MAX_BATCH_CEILING:
        raise ArtifactError(f"manifest.json sets the batch limit to {limit}, outside 1..{MAX_BATCH_CEILING}; the "
                            "manifest is corrupt or edited, rebuild the artifact.")
    return limit


def position_table_rows(root: Path, manifest: Manifest) -> dict[str, int]:
    """{tensor name: positions} of the position tables in the (hashed) weights file, less the rows
    before position 0 (BART's offset, read from the config the same file holds); empty when none."""
    if WEIGHTS_FILE not in manifest.files or not (Path(root) / WEIGHTS_FILE).is_file():
        return {}
    header = _safetensors_header(Path(root) / WEIGHTS_FILE)
    offset = _position_offset(header)
    rows = {}
    for name, entry in header.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if name.endswith(POSITION_TABLES) and isinstance(shape, list) and len(shape) == 2:
            rows[name] = int(shape[0]) - offset
    return rows


def _position_offset(header: dict) -> int:
    """position_offset of the model config in the weights file's metadata (0 when absent)."""
    try:
        offset = json.loads(header["__metadata__"][WEIGHTS_CONFIG_KEY]).get("position_offset", 0)
    except (KeyError, TypeError, ValueError, AttributeError):
        return 0
    return offset if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0 else 0


def check_position_limits(root: Path, manifest: Manifest) -> None:
    """Refuse a manifest whose position limits disagree with the model's position tables."""
    tables = position_table_rows(root, manifest)
    if not tables:
        return  # no table to overrun (rotary or sinusoidal positions computed in the graph)
    name, rows = min(tables.items(), key=lambda item: item[1])
    declared = manifest.config.get("max_positions")
    where = f"the model's position table ({name} in {WEIGHTS_FILE}, checked by hash) holds {rows} positions"
    if declared != rows:
        raise ArtifactError(f"manifest.json says max_positions={declared!r}, but {where}; the manifest was edited or "
                            "belongs to another build. Restore it or rebuild the artifact.")
    for dim, limit in manifest.dim_limits.items():
        if dim != "batch" and (not isinstance(limit, int) or limit > rows):
            raise ArtifactError(f"manifest.json allows {dim} up to {limit}, but {where}; the manifest was edited or "
                                "belongs to another build. Restore it or rebuild the artifact.")
    batch_limit(manifest.dim_limits)


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as fh:
        head = fh.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < size <= MAX_SAFETENSORS_HEADER:
            raise ArtifactError(f"{path} has no valid safetensors header; the artifact is corrupt, rebuild it.")
        raw = fh.read(size)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"{path} has an unreadable safetensors header; the artifact is corrupt, rebuild it.") from exc
    if not isinstance(header, dict):
        raise ArtifactError(f"{path} has an unreadable safetensors header; the artifact is corrupt, rebuild it.")
    return header


# --------------------------------------------------------------------------------------- --inputs


def check_names(arrays: Mapping[str, object], specs: list[TensorSpec]) -> None:
    expected = [s.name for s in specs]
    missing = [n for n in expected if n not in arrays]
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected input(s) {', '.join(extra)}")
        raise InputError(f"{' and '.join(parts)}; this model takes {', '.join(expected)}.")




def check_npz_headers(path: Path, specs: list[TensorSpec], limits: Mapping[str, int | None],
                      flag: str = "--inputs") -> None:
    """Refuse an .npz whose members declare arrays larger than the model accepts, before decompressing any."""
    by_name = {spec.name: spec for spec in specs}
    declared = _declared_arrays(path, flag)
    check_names({name: None for name, _, _ in declared}, specs)  # the names first, as Model.run would
    for name, shape, dtype in declared:
        _check_declared(flag, path, by_name[name], shape, dtype, limits)


def _declared_arrays(path: Path, flag: str) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """(name, shape, dtype) of each member, read from its .npy header alone."""
    arrays = []
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    arrays.append((info.filename.removesuffix(".npy"), *_npy_header(member)))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise InputError(f"{flag} {path} is not a readable .npz file ({exc}); it may be truncated.") from exc
    return arrays


def _npy_header(member) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(member)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(member)
    return tuple(int(n) for n in shape), dtype


def _check_declared(flag: str, path: Path, spec: TensorSpec, shape: tuple[int, ...], dtype: np.dtype,
                    limits: Mapping[str, int | None]) -> None:
    dims = [d if isinstance(d, int) else (batch_limit(limits) if d == "batch" else limits.get(d)) for d in spec.dims]
    most = math.prod(d for d in dims if d is not None) * np.dtype(spec.dtype).itemsize
    declared = math.prod(shape) * dtype.itemsize
    if None in dims or declared <= most:
        return  # within bounds; validate_inputs names any other mismatch once loaded
    bounds = ", ".join(f"{d}<={n}" for d, n in zip(spec.dims, dims) if isinstance(d, str))
    raise InputError(f"{flag} {path}: {spec.name} declares shape {shape} {dtype} ({_size(declared)}), more than the "
                     f"model accepts ({bounds}: at most {_size(most)}); it was not read. Split the inputs into "
                     "calls within those limits.")


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


__all__ = ["DEFAULT_MAX_BATCH", "MAX_BATCH_CEILING", "batch_limit", "check_names", "check_npz_headers", "check_position_limits",
           "position_table_rows"]
