"""Checkpoints as safetensors, with the model config as JSON in the file's metadata.

safetensors refuses tensors that share storage, so a tied weight (e.g. lm_head = wte) is saved
once under its first name; load rebuilds the model from the config, which re-ties it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from forgeline.runtime.errors import ArtifactError, ConfigError
from forgeline.runtime.format import WEIGHTS_CONFIG_KEY as CONFIG_KEY
from forgeline.runtime.params_file import SAFETENSORS_DTYPES

from .config import ForgelineModel, ModelConfig
from .registry import build_model

log = logging.getLogger(__name__)



def unique_state(model: ForgelineModel) -> tuple[dict, dict[str, str]]:
    """state_dict without aliases; returns (tensors, {alias: kept_name})."""
    tensors, aliases, seen = {}, {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().contiguous()
    return tensors, aliases


def save_checkpoint(model: ForgelineModel, path) -> None:
    from safetensors.torch import save_file

    tensors, aliases = unique_state(model)
    metadata = {CONFIG_KEY: model.config.to_json(), "forgeline.tied": json.dumps(aliases)}
    save_file(tensors, str(path), metadata=metadata)
    log.info("saved %s checkpoint to %s (%d tensors, %d tied)", model.config.name, path, len(tensors), len(aliases))


def load_checkpoint(path) -> ForgelineModel:
    """The model a checkpoint holds. Tensors are copied in one at a time, so loading holds the
    model's weights and one tensor, not a second copy of the whole checkpoint."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"checkpoint {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if CONFIG_KEY not in metadata:
                raise ArtifactError(f"checkpoint {path} has no {CONFIG_KEY!r} metadata; was it written by "
                                    "save_checkpoint?")
            model = build_model(_config(path, metadata))
            _copy_tensors(f, model, path)
    except ArtifactError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ArtifactError(f"checkpoint {path} is not a readable safetensors file: {exc}") from exc
    return model.eval()


def _config(path: Path, metadata: dict) -> ModelConfig:
    try:
        return ModelConfig.from_json(metadata[CONFIG_KEY])
    except (ConfigError, ValueError, TypeError) as exc:
        raise ArtifactError(f"checkpoint {path} holds an invalid config: {exc}") from exc


def _copy_tensors(f, model: ForgelineModel, path: Path) -> None:
    """Copy every tensor of the open checkpoint ``f`` into ``model``, which must want exactly them."""
    import torch

    _, aliases = unique_state(model)  # names the fresh model ties; they need no tensor in the file
    state = model.state_dict()
    expected, present = set(state) - set(aliases), set(f.keys())
    missing, unexpected = sorted(expected - present), sorted(present - expected)
    name = model.config.name
    if missing or unexpected:
        raise ArtifactError(f"checkpoint {path} does not match {name}: missing {missing}, unexpected {unexpected}.")
    offsets, data_start = _data_offsets(path)
    with torch.no_grad(), open(path, "rb") as fh:
        for key in sorted(present):
            stored = f.get_slice(key)  # dtype and shape, no data
            shape = tuple(stored.get_shape())
            if shape != tuple(state[key].shape):
                raise ArtifactError(f"checkpoint {path} does not match {name}: {key} has shape "
                                    f"{shape}, the model {tuple(state[key].shape)}.")
            if not _read_into(fh, data_start, offsets[key], stored.get_dtype(), state[key]):
                state[key].copy_(f.get_tensor(key))


def _data_offsets(path: Path) -> tuple[dict[str, tuple[int, int]], int]:
    """Each tensor's byte range relative to the data section, and where that section starts (the
    layout safetensors documents: an 8-byte header length, the JSON header, the data)."""
    with open(path, "rb") as fh:
        length = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(length))
    return ({key: tuple(entry["data_offsets"]) for key, entry in header.items() if key != "__metadata__"},
            8 + length)


def _read_into(fh, data_start: int, span: tuple[int, int], dtype: str, dst) -> bool:
    """Read a tensor's bytes from the file straight into ``dst``'s memory; False where ``dst``
    cannot take them that way (another dtype than the file's ``dtype``, not contiguous).

    A read, not a memory map: a map's pages would count in the process until the file closes,
    a second copy of the checkpoint on top of the model's.
    """
    import torch

    same_dtype = getattr(torch, SAFETENSORS_DTYPES.get(dtype, ""), None)  # "F32" -> torch.float32
    if dst.dtype != same_dtype or not dst.is_contiguous() or dst.device.type != "cpu":
        return False
    view = memoryview(dst.detach().numpy()).cast("B")
    begin, end = span
    if end - begin != view.nbytes:
        return False
    fh.seek(data_start + begin)
    done = 0
    while done < view.nbytes:
        got = fh.readinto(view[done:])
        if not got:
            raise ArtifactError(f"checkpoint {fh.name} ends inside a tensor; it is truncated.")
        done += got
    return True
