"""A Hugging Face ``config.json`` checked before anything is allocated from it.

A config is data from the internet: ``vocab_size`` 10**9 or ``num_hidden_layers`` 10**6 would
make the importer allocate until the process dies (``bad_alloc``, a 128 GB request), and a string
where a number belongs ends in a TypeError deep in torch. So each size field is type-checked and
bounded, and the model's parameter count is computed from the config alone and refused when its
fp32 weights cannot fit in this machine's memory, all before any tensor exists.

The field names cover the layouts forgeline imports and their close relatives (BERT, GPT-2, Llama-
style decoders, Mixtral-style MoE); a field a config does not have is not checked.
"""

from __future__ import annotations

import os
from pathlib import Path

from forgeline.runtime.errors import ConfigError

# field -> upper bound. Generous: several times the largest published model's value.
SIZE_BOUNDS = {
    "vocab_size": 1 << 22,  # 4M ids (the largest vocabularies are ~260k)
    "hidden_size": 1 << 16, "n_embd": 1 << 16, "d_model": 1 << 16,
    "intermediate_size": 1 << 18, "n_inner": 1 << 18, "ffn_dim": 1 << 18, "moe_intermediate_size": 1 << 18,
    "num_hidden_layers": 1024, "n_layer": 1024, "num_layers": 1024,
    "num_attention_heads": 1024, "n_head": 1024, "num_key_value_heads": 1024,
    "max_position_embeddings": 1 << 21, "n_positions": 1 << 21,
    "type_vocab_size": 1 << 16,
    "num_local_experts": 1024, "num_experts": 1024, "num_experts_per_tok": 1024,
    "head_dim": 1 << 12,
    "encoder_layers": 1024, "decoder_layers": 1024, "encoder_ffn_dim": 1 << 18, "decoder_ffn_dim": 1 << 18,
    "encoder_attention_heads": 1024, "decoder_attention_heads": 1024,  # BART
}
_ALIASES = {  # what the parameter count needs, by the names configs use for it
    "vocab": ("vocab_size",), "hidden": ("hidden_size", "n_embd", "d_model"),
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "ffn": ("intermediate_size", "n_inner", "ffn_dim"), "positions": ("max_position_embeddings", "n_positions"),
    "experts": ("num_local_experts", "num_experts"), "heads": ("num_attention_heads", "n_head"),
    "kv_heads": ("num_key_value_heads",),
}
BYTES_PER_PARAMETER = 4  # fp32, as the import holds them
HEADROOM = 2  # the import holds the checkpoint's tensors and the model's at once


def check_hf_config(hf: dict, source: str | Path = "config.json", memory_bytes: int | None = None) -> int:
    """Refuse a config with a mistyped or absurd size, or too many parameters for memory; the parameter count."""
    for key, bound in SIZE_BOUNDS.items():
        value = hf.get(key)
        if value is None:
            continue  # absent, or null (GPT-2's n_inner: 4 x n_embd)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} is {value!r} ({type(value).__name__}), not an integer; the config "
                              "is malformed.")
        if not 1 <= value <= bound:
            raise ConfigError(f"{source}: {key}={value} is outside 1..{bound}; forgeline refuses it before "
                              "allocating anything. Check the config.")
    params = parameter_count(hf)
    memory = memory_bytes if memory_bytes is not None else physical_memory()
    needed = params * BYTES_PER_PARAMETER * HEADROOM
    if memory and needed > memory:
        raise ConfigError(f"{source} describes a model of {params / 1e9:.2f} billion parameters, whose fp32 import "
                          f"needs about {needed / 2**30:.0f} GiB, but this machine has {memory / 2**30:.0f} GiB of "
                          "memory; import it on a larger machine.")
    return params


def parameter_count(hf: dict) -> int:
    """Weights of a Transformer with this config: embeddings, attention, FFN (x experts), norms, head."""
    size = {name: next((hf[k] for k in keys if isinstance(hf.get(k), int)), None) for name, keys in _ALIASES.items()}
    hidden = size["hidden"] or 768
    vocab = size["vocab"] or 0
    layers = size["layers"] or 12
    ffn = size["ffn"] or 4 * hidden
    experts = size["experts"] or 1
    gated = 3 if hf.get("hidden_act") == "silu" or hf.get("model_type") in ("llama", "mistral", "qwen2", "mixtral") else 2
    heads = size["heads"] or 1
    kv_width = (size["kv_heads"] or heads) * (hidden // heads)  # grouped-query attention shares K and V
    attention = 2 * hidden * hidden + 2 * hidden * kv_width
    per_layer = attention + experts * gated * hidden * ffn + 4 * hidden
    head = 0 if hf.get("tie_word_embeddings", True) else vocab * hidden
    return vocab * hidden + (size["positions"] or 0) * hidden + layers * per_layer + head


def physical_memory() -> int:
    """Bytes of RAM on this machine (0 when unknown: the count check is then skipped)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


__all__ = ["check_hf_config", "parameter_count", "physical_memory"]
