"""Model names, presets, and build_model.

A model name is a family plus a router setting; a preset sets the sizes. get_config merges
family preset, then the name's router settings, then the caller's overrides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from forgeline.runtime.errors import ConfigError, UnknownModelError

from .bert import BERT, BERTWithoutTokenTypes
from .config import ForgelineModel, ModelConfig
from .gpt import GPT
from .transformer import Transformer

log = logging.getLogger(__name__)

PRESET_NAMES = ("tiny", "small", "base")

_TINY = dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, vocab_size=264, max_positions=64, n_experts=4)
_SMALL = dict(d_model=256, n_layers=4, n_heads=4, d_ff=1024, vocab_size=8000, max_positions=256, n_experts=8)

# Per family: the architecture's own settings, then each preset's sizes.
_FAMILY_DEFAULTS = {
    "transformer": dict(activation="relu", positions="sinusoidal"),
    "bert": dict(activation="gelu", layer_norm_eps=1e-12),
    "gpt": dict(activation="gelu_tanh"),
}
_PRESETS = {
    "transformer": {"tiny": _TINY, "small": _SMALL,
                    "base": dict(d_model=512, n_layers=6, n_decoder_layers=6, n_heads=8, d_ff=2048,
                                 vocab_size=32000, max_positions=512, n_experts=8)},
    "bert": {"tiny": _TINY, "small": _SMALL,
             "base": dict(d_model=768, n_layers=12, n_heads=12, d_ff=3072, vocab_size=30522,
                          max_positions=512, type_vocab_size=2, n_experts=8)},
    "gpt": {"tiny": _TINY, "small": _SMALL,
            "base": dict(d_model=768, n_layers=12, n_heads=12, d_ff=3072, vocab_size=50257,
                         max_positions=1024, n_experts=8)},
}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    router: str
    presets: tuple[str, ...]
    description: str


# name -> (family, router settings, one-line description)
_MODELS: dict[str, tuple[str, dict, str]] = {
    "transformer": ("transformer", {}, "encoder-decoder Transformer (post-LN, ReLU FFN, sinusoidal positions)"),
    "transformer-moe": ("transformer", dict(router="expert_choice", capacity_factor=2.0, moe_every=2),
                        "encoder-decoder Transformer with expert-choice MoE in every other layer"),
    "bert": ("bert", {}, "BERT encoder with MLM (tied decoder) and NSP heads"),
    "bert-moe": ("bert", dict(router="expert_choice", capacity_factor=2.0, moe_every=2),
                 "BERT with expert-choice MoE (per-sequence groups, padding never routed) every other layer"),
    "gpt": ("gpt", {}, "GPT-2-style causal decoder with tied LM head"),
    "gpt-moe": ("gpt", dict(router="expert_choice", capacity_factor=2.0, moe_every=2),
                "GPT with expert-choice MoE every other layer (causal groups: one position across the batch)"),
    "gpt-moe-tc": ("gpt", dict(router="token_choice", router_top_k=2, capacity_factor=1.25, moe_every=2),
                   "GPT with token-choice top-2 (GShard) MoE, capacity limit and load-balancing loss"),
    "gpt-moe-switch": ("gpt", dict(router="token_choice", router_top_k=1, capacity_factor=1.25, moe_every=2),
                       "GPT with token-choice top-1 (Switch) MoE, capacity limit and load-balancing loss"),
}


def list_models() -> list[ModelInfo]:
    return [ModelInfo(name, family, settings.get("router", "none"), PRESET_NAMES, description)
            for name, (family, settings, description) in _MODELS.items()]


def get_config(name: str, preset: str = "tiny", **overrides) -> ModelConfig:
    """The config of a named model at a preset size, with field overrides applied last."""
    if name not in _MODELS:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(_MODELS)}.")
    family, settings, _ = _MODELS[name]
    if preset not in _PRESETS[family]:
        raise UnknownModelError(f"unknown preset {preset!r} for {name}; choose one of: {', '.join(PRESET_NAMES)}.")
    fields = {"name": name, "family": family, **_FAMILY_DEFAULTS[family], **_PRESETS[family][preset], **settings}
    if preset == "tiny" and fields.get("router", "none") != "none":
        fields["moe_every"] = 1  # tiny has 2 layers: make both MoE so tests see several routing outputs
    valid = set(ModelConfig().to_dict())
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(f"unknown config overrides {unknown}; valid fields are {sorted(valid)}.")
    fields.update(overrides)
    return ModelConfig.from_dict(fields)


def model_class(config: ModelConfig):
    """The class that builds ``config``: its family's, or BERT's variant without token types."""
    if config.family == "bert" and config.type_vocab_size == 0:
        return BERTWithoutTokenTypes
    return {"transformer": Transformer, "bert": BERT, "gpt": GPT}[config.family]


def build_model(config: ModelConfig, seed: int = 0) -> ForgelineModel:
    """A model with seeded init, in eval mode. The global RNG state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)(config)
        model.apply(model._init_weights)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built %s (%s, router=%s): %.2fM parameters", config.name, config.family, config.router, n_params / 1e6)
    return model.eval()
