"""Import Hugging Face checkpoints into forgeline models, without `transformers`.

A checkpoint folder holds config.json and model.safetensors (or shards with
model.safetensors.index.json). A pickled pytorch_model.bin is refused, never unpickled, and so is
a config that asks for remote code. The architecture comes from config.json's ``model_type``:
hf_configs.py turns its fields into a ModelConfig, hf_layouts.py maps its tensors onto the
family's names. The import ends with a set difference that names every missing and unexpected key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from forgeline.runtime.errors import ArtifactError, ConfigError

from .checkpoint import unique_state
from .config import ForgelineModel
from .hf_configs import CONFIGS, check_fits_memory
from .hf_layouts import LAYOUTS, PARAMS, Layout
from .hf_limits import check_hf_config
from .registry import build_model

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


_USED_BY = {"pooler.": "next-sentence", "mlm.": "fill-mask", "nsp.": "next-sentence"}  # optional part -> task


def _pairs(hf_template: str, ours: tuple[str, ...], n_layers: int) -> dict[str, list[str]]:
    """Concrete {HF key: [our names]} of one rule, expanding {i} and {p} in lockstep."""
    table = {}
    for i in range(n_layers) if "{i}" in hf_template else [None]:
        for p in PARAMS if "{p}" in hf_template else [None]:
            def fill(t: str) -> str:
                t = t if i is None else t.replace("{i}", str(i))
                return t if p is None else t.replace("{p}", p)
            table[fill(hf_template)] = [fill(t) for t in ours]
    return table


def _expand(template: str, n_layers: int) -> list[str]:
    """Every concrete key of one template."""
    return list(_pairs(template, (), n_layers))


def mapping_table(layout: Layout, n_layers: int) -> dict[str, list[str]]:
    """Every HF key this layout reads, and the forgeline name(s) it becomes (several for a split)."""
    table: dict[str, list[str]] = {}
    for hf, ours in layout.renames:
        table.update(_pairs(hf, (ours,), n_layers))
    for hf, ours in layout.splits:
        table.update(_pairs(hf, ours, n_layers))
    return table


def _normalise_keys(layout: Layout, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the head class's base-model prefix and rename legacy suffixes."""
    out = {}
    for key, tensor in state.items():
        for prefix in layout.strip_prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        for old, new in layout.legacy_suffixes:
            if key.endswith(old):
                key = key[: -len(old)] + new
        out[key] = tensor
    return out


def import_state(layout: Layout, hf_state: dict[str, torch.Tensor], model: ForgelineModel, source: str) -> list[str]:
    """Load ``hf_state`` into ``model`` through ``layout``; returns the optional parts it lacked.

    Raises ArtifactError naming every missing and unexpected key, and every shape that differs.
    ``hf_state`` is consumed (emptied): each checkpoint tensor is converted and copied into the
    model one at a time and then dropped, so the import holds the model, the file's tensors not
    yet copied and one converted tensor, not a second model's worth of converted weights.
    """
    n_layers = layer_count(model.config)
    state = _normalise_keys(layout, hf_state)
    hf_state.clear()  # ``state`` alone holds the file's tensors now: each goes once it is copied
    _, aliases = unique_state(model)
    targets = model.state_dict()  # views of the parameters: copying into them loads the model
    ours = set(targets) - set(aliases)  # what this configuration has: no switched-off biases
    table = {hf: names for hf, names in mapping_table(layout, n_layers).items() if set(names) <= ours}
    ignored = {k for t in layout.ignore for k in _expand(t, n_layers)}
    tied = {hf: name for hf, name in layout.tied if hf not in table}  # an untied head is a rename instead
    stacks = expert_table(layout, model.config, ours)
    stacked_keys = {k for per_expert in stacks.values() for keys in per_expert for k in keys}
    present_ours = {name for hf, names in table.items() if hf in state for name in names}
    absent = [p for p in layout.optional if not any(n.startswith(p) for n in present_ours)]

    def fresh(name: str) -> bool:
        return any(name.startswith(p) for p in absent)

    missing = sorted(hf for hf, names in table.items() if hf not in state and not all(map(fresh, names)))
    missing += sorted(stacked_keys - set(state))
    unexpected = sorted(set(state) - set(table) - ignored - set(tied) - stacked_keys)
    if missing or unexpected:
        raise ArtifactError(
            f"{source} does not fit the Hugging Face layout for {layout.family}: missing keys {missing}, "
            f"unexpected keys {unexpected} (names without the prefixes {list(layout.strip_prefixes)}); "
            "pass an unmodified checkpoint of a supported architecture."
        )
    meta = {hf: tensor.to("meta") for hf, tensor in state.items()}  # shapes only, no bytes
    shapes = dict(_convert(layout, meta, table, model.config)) | dict(_stack_experts(stacks, meta, source))
    _check_shapes(shapes, targets, source)  # every misfit named before anything is copied
    buffers = {name for name, _ in model.named_buffers()}
    unloaded = sorted(set(targets) - set(shapes) - set(aliases) - buffers)
    unloaded = [n for n in unloaded if not fresh(n)]
    if unloaded:  # a gap in the table itself, not in the checkpoint
        raise ConfigError(f"the {layout.family} import table fills no tensor for {unloaded}.")
    with torch.no_grad():
        for name, tensor in _convert(layout, state, table, model.config, consume=True):
            targets[name].copy_(tensor)
        for name, tensor in _stack_experts(stacks, state, source, consume=True):
            targets[name].copy_(tensor)
    _check_tied(tied, state, targets, source)
    return absent


def layer_count(config) -> int:
    """How many indices {i} runs over: the deeper side of an encoder-decoder (the other side's extra
    rules name tensors the model lacks, and are dropped)."""
    return max(config.n_layers, config.n_decoder_layers)


def expert_table(layout: Layout, config, ours: set[str]) -> dict[str, list[tuple[str, ...]]]:
    """{our stacked name: per expert, the HF keys laid side by side} for the MoE layers ``ours`` has."""
    table = {}
    for hf_templates, our_template in layout.experts:
        for i in range(config.n_layers):
            name = our_template.replace("{i}", str(i))
            if name in ours:
                table[name] = [tuple(t.replace("{i}", str(i)).replace("{e}", str(e)) for t in hf_templates)
                               for e in range(config.n_experts)]
    return table


def _stack_experts(stacks: dict[str, list[tuple[str, ...]]], state: dict, source: str, *,
                   consume: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, (E, in, out)): each expert's Linear weights (out, in), transposed to (in, out), side
    by side, stacked. With ``consume`` each stack's source tensors leave ``state`` once it is made."""
    for name, per_expert in stacks.items():
        try:
            stacked = torch.stack([torch.cat([state[k].float().t() for k in keys], dim=-1) for keys in per_expert])
        except RuntimeError as exc:  # experts of unequal shapes
            raise ArtifactError(f"{source} has expert weights for {name} whose shapes differ: {exc}") from exc
        if consume:
            for key in (k for keys in per_expert for k in keys):
                state.pop(key, None)
        yield name, stacked


def _convert(layout: Layout, state: dict[str, torch.Tensor], table: dict[str, list[str]], config, *,
             consume: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(our name, tensor): renamed, transposed and split tensors, as contiguous fp32, one checkpoint
    tensor at a time. With ``consume`` each checkpoint tensor leaves ``state`` as it is converted."""
    transpose = {k for t in layout.transpose for k in _expand(t, layer_count(config))}
    for hf, names in table.items():
        if hf not in state:
            continue
        tensor = (state.pop(hf) if consume else state[hf]).float()
        if hf in transpose:
            tensor = tensor.t()  # Conv1D (in, out) -> Linear (out, in)
        chunks = _split(tensor, len(names), config.n_heads if layout.splits_per_head else 0)
        for name, chunk in zip(names, chunks):
            yield name, chunk.contiguous()


def _split(tensor: torch.Tensor, parts: int, per_head: int) -> tuple[torch.Tensor, ...]:
    """(parts * D, ...) -> parts x (D, ...): equal blocks (c_attn), or rows interleaved per head."""
    if parts == 1:
        return (tensor,)
    if not per_head or tensor.shape[0] % (per_head * parts):
        return tensor.chunk(parts, dim=0)  # a misfit shape is reported by _check_shapes
    by_head = tensor.unflatten(0, (per_head, parts, -1))  # (nh, parts, hs, ...)
    return tuple(t.flatten(0, 1) for t in by_head.unbind(1))  # parts x (nh * hs, ...)


def _check_shapes(converted: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], source: str) -> None:
    wrong = [f"{n} {tuple(t.shape)} (model expects {tuple(ours[n].shape)})"
             for n, t in converted.items() if t.shape != ours[n].shape]
    if wrong:
        raise ArtifactError(f"{source} has tensors whose shapes do not fit its config.json: {'; '.join(wrong)}.")


def _check_tied(tied: dict[str, str], state: dict, converted: dict[str, torch.Tensor], source: str) -> None:
    """A saved copy of a tied tensor must equal it: forgeline models tie those weights."""
    for hf, ours in tied.items():
        if hf in state and ours in converted and not torch.equal(state[hf].float(), converted[ours]):
            raise ConfigError(
                f"{source} has an untied {hf} that differs from {ours}; forgeline ties these weights, "
                "so this checkpoint cannot be imported exactly."
            )


# ------------------------------------------------------------------------------------ config.json


def read_hf_config(folder: Path) -> tuple[str, dict]:
    """(model_type, config dict) of a checkpoint folder."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ArtifactError(f"{folder} has no {CONFIG_FILE}; pass a Hugging Face checkpoint folder.")
    try:
        hf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}).") from exc
    model_type = hf.get("model_type") if isinstance(hf, dict) else None
    if isinstance(hf, dict) and (hf.get("auto_map") or hf.get("trust_remote_code")):
        raise ConfigError(f"{path} asks for the checkpoint's own Python code (auto_map / trust_remote_code), which "
                          f"forgeline never runs; it imports {', '.join(LAYOUTS)}.")
    if model_type not in LAYOUTS:
        raise ConfigError(f"{path} has model_type {model_type!r}; forgeline imports {', '.join(LAYOUTS)}.")
    check_hf_config(hf, path)  # types, bounds and parameter count, before anything is allocated
    return model_type, hf


# --------------------------------------------------------------------------------------- weights


def read_hf_state(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint folder: safetensors, single or sharded. Pickles are refused."""
    from safetensors.torch import load_file

    single, index = (folder / name for name in WEIGHT_FILES)
    try:
        if single.is_file():
            return load_file(str(single))
        if index.is_file():
            return _read_shards(folder, index)
    except (OSError, KeyError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"the weights in {folder} are not readable ({exc}).") from exc
    except Exception as exc:  # safetensors and unpickling raise their own types for corrupt files
        raise ArtifactError(f"the weights in {folder} are not readable ({type(exc).__name__}: {exc}).") from exc
    if any((folder / name).is_file() for name in PICKLE_FILES):
        raise ArtifactError(f"{folder} holds its weights only as a pickle (pytorch_model.bin), which forgeline never "
                            "loads, since unpickling can run code; convert it to model.safetensors first.")
    raise ArtifactError(f"{folder} holds none of {', '.join(WEIGHT_FILES)}; pass a Hugging Face checkpoint folder.")


def _read_shards(folder: Path, index: Path) -> dict[str, torch.Tensor]:
    """Every shard an index names (inside the folder), holding exactly the tensors it maps."""
    from safetensors.torch import load_file

    weight_map = json.loads(index.read_text())["weight_map"]
    shards = sorted(set(weight_map.values()))
    outside = [s for s in shards if not isinstance(s, str) or Path(s).name != s]
    if outside:
        raise ArtifactError(f"{index} names shards outside its folder: {outside}.")
    log.info("reading %d safetensors shards", len(shards))
    state = {k: v for shard in shards for k, v in load_file(str(folder / shard)).items()}
    if set(state) != set(weight_map):
        raise ArtifactError(f"the shards in {folder} do not hold the tensors {index.name} lists: "
                            f"missing {sorted(set(weight_map) - set(state))}, extra {sorted(set(state) - set(weight_map))}.")
    return state


def load_hf_checkpoint(path: str | Path, seed: int = 0) -> ForgelineModel:
    """A forgeline model (eval mode) holding the weights of a Hugging Face checkpoint folder.

    Parts the checkpoint lacks (a BertModel's MLM/NSP heads and pooler) keep a seeded init.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a folder; pass a Hugging Face checkpoint folder (config.json + weights).")
    model_type, hf = read_hf_config(folder)
    config = CONFIGS[model_type](hf, str(folder / CONFIG_FILE))
    check_fits_memory(config, str(folder / CONFIG_FILE))
    layout = LAYOUTS[model_type]
    state = read_hf_state(folder)
    log.info("importing %s (%s, %d tensors) from %s", model_type, ",".join(hf.get("architectures") or ["?"]),
             len(state), folder)
    model = build_model(config, seed=seed)
    absent = import_state(layout, state, model, str(folder))
    if absent:
        tasks = sorted({_USED_BY[p] for p in absent})
        log.warning("%s has no %s weights: those parts are a fresh init (seed %d), so %s output is meaningless; "
                    "hidden_states are the checkpoint's", folder, ", ".join(p.rstrip(".") for p in absent), seed,
                    " and ".join(tasks))
    return model.eval()
