"""Import Hugging Face BERT and GPT-2 checkpoints into forgeline models, without `transformers`.

A checkpoint folder holds config.json and model.safetensors (or a sharded index, or
pytorch_model.bin). Each architecture has one declarative ``Layout``: renames, tensors to
transpose (GPT-2's Conv1D stores (in, out)), fused tensors to split (GPT-2's c_attn → query, key,
value), tied copies, buffers to ignore, and parts a checkpoint may lack (a BertModel has no MLM
or NSP head). The import ends with a set difference that names every missing and unexpected key.

Templates use ``{i}`` for a layer index and ``{p}`` for ``weight``/``bias``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from forgeline.runtime.errors import ArtifactError, ConfigError

from .checkpoint import unique_state
from .config import ForgelineModel, ModelConfig
from .hf_limits import check_hf_config
from .registry import build_model

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass(frozen=True, kw_only=True)
class Layout:
    """How one Hugging Face architecture's state dict maps onto one forgeline family."""

    family: str  # the forgeline family it imports into
    strip_prefixes: tuple[str, ...]  # base-model prefixes of HF head classes ("bert.", "transformer.")
    renames: tuple[tuple[str, str], ...]  # (HF template, our template)
    transpose: tuple[str, ...] = ()  # HF templates stored (in, out), as Conv1D: transposed to Linear's (out, in)
    splits: tuple[tuple[str, tuple[str, ...]], ...] = ()  # HF template -> our templates, equal chunks of dim 0
    tied: tuple[tuple[str, str], ...] = ()  # (HF key, our name): a copy of a tied tensor, checked equal when present
    ignore: tuple[str, ...] = ()  # HF templates of buffers that hold no weights (masks, position ids)
    optional: tuple[str, ...] = ()  # our name prefixes a checkpoint may lack; they keep the seeded init
    legacy_suffixes: tuple[tuple[str, str], ...] = ()  # old TF-converted names (".gamma" -> ".weight")


_PARAM = ("weight", "bias")

BERT_LAYOUT = Layout(
    family="bert",
    strip_prefixes=("bert.",),
    renames=(
        ("embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight"),
        ("embeddings.position_embeddings.weight", "embeddings.position_embeddings.weight"),
        ("embeddings.token_type_embeddings.weight", "embeddings.token_type_embeddings.weight"),
        ("embeddings.LayerNorm.{p}", "embeddings.LayerNorm.{p}"),
        ("encoder.layer.{i}.attention.self.query.{p}", "layer.{i}.attention.query.{p}"),
        ("encoder.layer.{i}.attention.self.key.{p}", "layer.{i}.attention.key.{p}"),
        ("encoder.layer.{i}.attention.self.value.{p}", "layer.{i}.attention.value.{p}"),
        ("encoder.layer.{i}.attention.output.dense.{p}", "layer.{i}.attention.output.{p}"),
        ("encoder.layer.{i}.attention.output.LayerNorm.{p}", "layer.{i}.attention_LayerNorm.{p}"),
        ("encoder.layer.{i}.intermediate.dense.{p}", "layer.{i}.ffn.fc1.{p}"),
        ("encoder.layer.{i}.output.dense.{p}", "layer.{i}.ffn.fc2.{p}"),
        ("encoder.layer.{i}.output.LayerNorm.{p}", "layer.{i}.output_LayerNorm.{p}"),
        ("pooler.dense.{p}", "pooler.{p}"),
        ("cls.predictions.transform.dense.{p}", "mlm.dense.{p}"),
        ("cls.predictions.transform.LayerNorm.{p}", "mlm.LayerNorm.{p}"),
        ("cls.predictions.bias", "mlm.bias"),
        ("cls.seq_relationship.{p}", "nsp.{p}"),
    ),
    tied=(("cls.predictions.decoder.weight", "embeddings.word_embeddings.weight"),
          ("cls.predictions.decoder.bias", "mlm.bias")),
    ignore=("embeddings.position_ids",),
    optional=("pooler.", "mlm.", "nsp."),  # BertModel has no heads; BertForMaskedLM has no pooler/NSP
    legacy_suffixes=((".gamma", ".weight"), (".beta", ".bias")),
)

GPT2_LAYOUT = Layout(
    family="gpt",
    strip_prefixes=("transformer.",),
    renames=(
        ("wte.weight", "wte.weight"),
        ("wpe.weight", "wpe.weight"),
        ("h.{i}.ln_1.{p}", "h.{i}.ln_1.{p}"),
        ("h.{i}.attn.c_proj.{p}", "h.{i}.attn.output.{p}"),
        ("h.{i}.ln_2.{p}", "h.{i}.ln_2.{p}"),
        ("h.{i}.mlp.c_fc.{p}", "h.{i}.mlp.fc1.{p}"),
        ("h.{i}.mlp.c_proj.{p}", "h.{i}.mlp.fc2.{p}"),
        ("ln_f.{p}", "ln_f.{p}"),
    ),
    transpose=("h.{i}.attn.c_attn.weight", "h.{i}.attn.c_proj.weight", "h.{i}.mlp.c_fc.weight",
               "h.{i}.mlp.c_proj.weight"),
    splits=(("h.{i}.attn.c_attn.{p}", ("h.{i}.attn.query.{p}", "h.{i}.attn.key.{p}", "h.{i}.attn.value.{p}")),),
    tied=(("lm_head.weight", "wte.weight"),),
    ignore=("h.{i}.attn.bias", "h.{i}.attn.masked_bias"),  # causal-mask buffers of older checkpoints
)

LAYOUTS = {"bert": BERT_LAYOUT, "gpt2": GPT2_LAYOUT}
_USED_BY = {"pooler.": "next-sentence", "mlm.": "fill-mask", "nsp.": "next-sentence"}  # optional part -> task


def _pairs(hf_template: str, ours: tuple[str, ...], n_layers: int) -> dict[str, list[str]]:
    """Concrete {HF key: [our names]} of one rule, expanding {i} and {p} in lockstep."""
    table = {}
    for i in range(n_layers) if "{i}" in hf_template else [None]:
        for p in _PARAM if "{p}" in hf_template else [None]:
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
    """
    n_layers = model.config.n_layers
    state = _normalise_keys(layout, hf_state)
    table = mapping_table(layout, n_layers)
    ignored = {k for t in layout.ignore for k in _expand(t, n_layers)}
    tied = dict(layout.tied)
    present_ours = {name for hf, names in table.items() if hf in state for name in names}
    absent = [p for p in layout.optional if not any(n.startswith(p) for n in present_ours)]

    def fresh(name: str) -> bool:
        return any(name.startswith(p) for p in absent)

    missing = sorted(hf for hf, names in table.items() if hf not in state and not all(map(fresh, names)))
    unexpected = sorted(set(state) - set(table) - ignored - set(tied))
    if missing or unexpected:
        raise ArtifactError(
            f"{source} does not fit the Hugging Face layout for {layout.family}: missing keys {missing}, "
            f"unexpected keys {unexpected} (names without the prefixes {list(layout.strip_prefixes)}); "
            "pass an unmodified checkpoint of a supported architecture."
        )
    converted = _convert(layout, state, table, n_layers)
    _check_shapes(converted, model.state_dict(), source)
    _check_tied(tied, state, converted, source)
    _, aliases = unique_state(model)
    buffers = {name for name, _ in model.named_buffers()}
    unloaded = sorted(set(model.state_dict()) - set(converted) - set(aliases) - buffers)
    unloaded = [n for n in unloaded if not fresh(n)]
    if unloaded:  # a gap in the table itself, not in the checkpoint
        raise ConfigError(f"the {layout.family} import table fills no tensor for {unloaded}.")
    model.load_state_dict(converted, strict=False)
    return absent


def _convert(layout: Layout, state: dict[str, torch.Tensor], table: dict[str, list[str]], n_layers: int):
    """Our state dict: renamed, transposed and split tensors, as contiguous fp32."""
    transpose = {k for t in layout.transpose for k in _expand(t, n_layers)}
    out: dict[str, torch.Tensor] = {}
    for hf, names in table.items():
        if hf not in state:
            continue
        tensor = state[hf].float()
        if hf in transpose:
            tensor = tensor.t()  # Conv1D (in, out) -> Linear (out, in)
        chunks = tensor.chunk(len(names), dim=0) if len(names) > 1 else (tensor,)  # c_attn: (3D, D) -> 3 x (D, D)
        for name, chunk in zip(names, chunks):
            out[name] = chunk.contiguous()
    return out


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

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def _activation(name: str, source: str) -> str:
    if name not in _ACTIVATIONS:
        raise ConfigError(f"{source} uses activation {name!r}; forgeline imports {', '.join(_ACTIVATIONS)}.")
    return _ACTIVATIONS[name]


def bert_config(hf: dict, source: str = "config.json") -> ModelConfig:
    """HF BertConfig fields -> ModelConfig (HF defaults where a field is absent)."""
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"{source} uses position_embedding_type={hf['position_embedding_type']!r}; "
                          "forgeline imports absolute positions only.")
    return ModelConfig(
        name="bert", family="bert", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
        max_positions=hf.get("max_position_embeddings", 512), type_vocab_size=hf.get("type_vocab_size", 2),
        activation=_activation(hf.get("hidden_act", "gelu"), source), layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        init_std=hf.get("initializer_range", 0.02),
    )


def gpt2_config(hf: dict, source: str = "config.json") -> ModelConfig:
    """HF GPT2Config fields -> ModelConfig; refuses the attention variants our GPT does not compute."""
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
        raise ConfigError(f"{source} scales attention other than by 1/sqrt(head_dim); forgeline imports the "
                          "standard GPT-2 attention only.")
    if hf.get("add_cross_attention", False):
        raise ConfigError(f"{source} has cross-attention; forgeline imports decoder-only GPT-2 only.")
    n_embd = hf.get("n_embd", 768)
    return ModelConfig(
        name="gpt", family="gpt", vocab_size=hf.get("vocab_size", 50257), d_model=n_embd,
        n_layers=hf.get("n_layer", 12), n_heads=hf.get("n_head", 12), d_ff=hf.get("n_inner") or 4 * n_embd,
        max_positions=hf.get("n_positions", 1024),
        activation=_activation(hf.get("activation_function", "gelu_new"), source),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5), init_std=hf.get("initializer_range", 0.02),
    )


_CONFIGS = {"bert": bert_config, "gpt2": gpt2_config}


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
    if model_type not in LAYOUTS:
        raise ConfigError(f"{path} has model_type {model_type!r}; forgeline imports {', '.join(LAYOUTS)}.")
    check_hf_config(hf, path)  # types, bounds and parameter count, before anything is allocated
    return model_type, hf


# --------------------------------------------------------------------------------------- weights


def read_hf_state(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint folder: safetensors (single or sharded) or pytorch_model.bin."""
    from safetensors.torch import load_file

    single, index, pickle = (folder / name for name in WEIGHT_FILES)
    try:
        if single.is_file():
            return load_file(str(single))
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            log.info("reading %d safetensors shards", len(shards))
            return {k: v for shard in shards for k, v in load_file(str(folder / shard)).items()}
        if pickle.is_file():
            return torch.load(pickle, map_location="cpu", weights_only=True)  # no code runs from the file
    except (OSError, KeyError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"the weights in {folder} are not readable ({exc}).") from exc
    except Exception as exc:  # safetensors and unpickling raise their own types for corrupt files
        raise ArtifactError(f"the weights in {folder} are not readable ({type(exc).__name__}: {exc}).") from exc
    raise ArtifactError(f"{folder} holds none of {', '.join(WEIGHT_FILES)}; pass a Hugging Face checkpoint folder.")


def load_hf_checkpoint(path: str | Path, seed: int = 0) -> ForgelineModel:
    """A forgeline model (eval mode) holding the weights of a Hugging Face BERT or GPT-2 folder.

    Parts the checkpoint lacks (a BertModel's MLM/NSP heads and pooler) keep a seeded init.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a folder; pass a Hugging Face checkpoint folder (config.json + weights).")
    model_type, hf = read_hf_config(folder)
    config = _CONFIGS[model_type](hf, str(folder / CONFIG_FILE))
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
