"""A user's ONNX file into a bundle: ONNX Runtime on that same file is the reference.

Input names, dtypes and symbolic dims come from the file; outputs keep their ONNX names. The file is
read with care, since it comes from outside: its size (with its external data) is checked against
a stated limit before anything is parsed, every external-data ``location`` must stay inside the
file's own folder, and a file that does not parse or fails the ONNX checker is refused with one
sentence. The bundle's model.onnx is the same graph, its weights moved into model.onnx.data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from forgeline.runtime.errors import ConfigError, ExportError, InputError, error_summary
from forgeline.runtime.format import ONNX_FILE, Manifest, TensorSpec
from forgeline.runtime.inputs import random_inputs, symbolic_dims

from .foreign import finish_bundle, golden_sizes, leading_dims, make_cases, new_manifest, specs_from_onnx

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 4 << 30  # graph plus external data; a larger model needs a larger stated limit
DATA_FILE = ONNX_FILE + ".data"


@dataclass(frozen=True, kw_only=True)
class OnnxSource:
    path: Path
    max_bytes: int = DEFAULT_MAX_BYTES  # refuse a model (graph + external data) larger than this
    name: str | None = None  # the artifact's model name; the file's stem by default
    dim_limits: dict[str, int] = field(default_factory=dict)  # max size per symbolic dim (a file states none)


def import_onnx_into(source: OnnxSource, out: Path, versions: dict[str, str]) -> Manifest:
    """Copy the graph of ``source`` into the empty folder ``out`` with golden vectors from ONNX Runtime."""
    import onnx

    path = Path(source.path)
    model = read_onnx(path, source.max_bytes)
    specs = specs_from_onnx(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    log.info("import %s (opset %s, inputs %s)", path, opset, [s.name for s in specs])
    reference = _ort_reference(path)
    onnx.save_model(model, str(out / ONNX_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=DATA_FILE, size_threshold=1024)
    config = {"file": path.name, "opset": opset, "producer": model.producer_name}
    limits = _checked_limits(source.dim_limits, specs)
    manifest = new_manifest(source.name or path.stem, "onnx", config, specs, limits, versions)
    inputs = [random_inputs(specs, sizes, seed) for seed, sizes in enumerate(case_shapes(specs, limits=limits))]
    return finish_bundle(out, manifest, make_cases(inputs, reference))


def case_shapes(specs: list[TensorSpec], first: int = 0, count: int = 2,
                limits: dict[str, int | None] | None = None) -> list[dict[str, int]]:
    """Sizes of the symbolic dims for ``count`` cases (one when the graph has none)."""
    dims = symbolic_dims(specs)
    if not dims:
        return [{}]
    return [golden_sizes(dims, first + i, leading_dims(specs), limits or {}) for i in range(count)]


def _checked_limits(limits: dict[str, int], specs: list[TensorSpec]) -> dict[str, int]:
    """The stated limits, each naming a symbolic dim of the file and at least 1."""
    dims = symbolic_dims(specs)
    for dim, limit in limits.items():
        if dim not in dims:
            raise ConfigError(f"a limit is given for dim {dim!r}, but the file's inputs have the symbolic dims "
                              f"{', '.join(dims) or '(none)'}.")
        if not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"the limit of dim {dim!r} is {limit!r}; give a size of at least 1.")
    return dict(limits)


def read_onnx(path: Path, max_bytes: int):
    """The model with its external data, after the size, confinement and checker tests."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    if not path.is_file():
        raise InputError(f"{path} is not a file; pass the path of an .onnx model.")
    if path.stat().st_size > max_bytes:
        raise InputError(f"{path} is {path.stat().st_size} bytes, over the stated limit of {max_bytes}; "
                         "raise the limit if the model is meant to be this large.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for a damaged file
        raise InputError(f"{path} is not a readable ONNX model ({error_summary(exc)}); "
                         "it may be truncated or not an ONNX file.") from exc
    tensors = [t for t in _all_tensors(model) if uses_external_data(t)]
    total = path.stat().st_size + sum(_external_size(path, t) for t in tensors)
    if total > max_bytes:
        raise InputError(f"{path} with its external data is {total} bytes, over the stated limit of "
                         f"{max_bytes}; raise the limit if the model is meant to be this large.")
    try:
        onnx.checker.check_model(str(path))  # by path: a model past protobuf's 2 GB limit checks too
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path} is not a valid ONNX model ({error_summary(exc)}).") from exc
    return model


def _all_tensors(model):
    from onnx.external_data_helper import _get_all_tensors

    return list(_get_all_tensors(model))


def _external_size(path: Path, tensor) -> int:
    """The bytes one external tensor reads; refuses a location outside the model's folder."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    folder = path.parent.resolve()
    target = (folder / location).resolve()
    if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
        raise InputError(f"{path}: tensor {tensor.name} keeps its data at {location!r}, outside the model's "
                         "folder; external data is read only from beside the .onnx file.")
    if not target.is_file():
        raise InputError(f"{path}: tensor {tensor.name}'s external data {location!r} is missing.")
    return int(info["length"]) if "length" in info else target.stat().st_size


def _ort_reference(path: Path):
    """ONNX Runtime on the user's own file, as a function of named input arrays."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types
        raise ExportError(f"ONNX Runtime, the reference, cannot load {path}: {error_summary(exc)}.") from exc
    names = [o.name for o in session.get_outputs()]

    def run(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return dict(zip(names, session.run(names, arrays)))
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"ONNX Runtime, the reference, failed on {path} at input shapes "
                              f"{ {k: v.shape for k, v in arrays.items()} }: {error_summary(exc)}.") from exc

    return run


__all__ = ["DEFAULT_MAX_BYTES", "OnnxSource", "case_shapes", "import_onnx_into", "read_onnx"]
