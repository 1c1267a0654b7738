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
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"checkpoint {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ArtifactError(f"checkpoint {path} is not a readable safetensors file: {exc}") from exc
    if CONFIG_KEY not in metadata:
        raise ArtifactError(f"checkpoint {path} has no {CONFIG_KEY!r} metadata; was it written by save_checkpoint?")
    try:
        config = ModelConfig.from_json(metadata[CONFIG_KEY])
    except (ConfigError, ValueError, TypeError) as exc:
        raise ArtifactError(f"checkpoint {path} holds an invalid config: {exc}") from exc
    model = build_model(config)
    _, aliases = unique_state(model)  # names the fresh model ties; they need no tensor in the file
    expected = set(model.state_dict()) - set(aliases)
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ArtifactError(f"checkpoint {path} does not match {config.name}: missing {missing}, unexpected {unexpected}.")
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ArtifactError(f"checkpoint {path} does not match {config.name}: {exc}") from exc
    return model.eval()
