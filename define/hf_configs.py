"""config.json -> ModelConfig for each imported Hugging Face architecture, typed and bounded.

A config.json is input from outside: every field is read through ``_Fields``, which checks its
type and range and refuses with one sentence (a string ``vocab_size``, a 10**9 vocabulary), and
``check_fits_memory`` refuses a model whose weights the machine could not hold, by counting the
parameters of the configured model on torch's meta device, where nothing is allocated.
"""

from __future__ import annotations

import logging
import os

import torch

from forgeline.runtime.errors import ConfigError

from .config import ModelConfig

log = logging.getLogger(__name__)

# The GPT family's causal mask is a (P, P) fp32 table in every graph; 2048 positions keep it at
# 16 MiB. Longer contexts are cut to this (sliding-window models to their window, if shorter).
MAX_IMPORT_POSITIONS = 2048
_WIDTH, _LAYERS, _HEADS, _VOCAB = 1 << 16, 1024, 1024, 1 << 22  # far beyond any released model

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
                "silu": "silu"}


class _Fields:
    """Typed, bounded reads of one config.json, with HF's defaults where a field is absent."""

    def __init__(self, hf: dict, source: str):
        self.hf, self.source = hf, source

    def int(self, key: str, default: int | None, hi: int, lo: int = 1) -> int:
        value = self.hf.get(key, default)
        if value is None or isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"{self.source} has {key}={value!r}; forgeline needs an integer in [{lo}, {hi}].")
        return value

    def float(self, key: str, default: float, lo: float, hi: float) -> float:
        value = self.hf.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise ConfigError(f"{self.source} has {key}={value!r}; forgeline needs a number in [{lo}, {hi}].")
        return float(value)

    def bool(self, key: str, default: bool) -> bool:
        value = self.hf.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.source} has {key}={value!r}; forgeline needs true or false.")
        return value

    def activation(self, key: str, default: str) -> str:
        name = self.hf.get(key, default)
        if name not in _ACTIVATIONS:
            raise ConfigError(f"{self.source} uses activation {name!r}; forgeline imports {', '.join(_ACTIVATIONS)}.")
        return _ACTIVATIONS[name]

    def refuse_unless(self, ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"{self.source} {what}.")


def _positions(n: int, window: int | None = None) -> int:
    limit = min(n, window or n, MAX_IMPORT_POSITIONS)
    if limit < n:
        log.info("positions limited to %d of the checkpoint's %d", limit, n)
    return limit


def bert_config(hf: dict, source: str = "config.json") -> ModelConfig:
    """HF BertConfig / RobertaConfig fields -> ModelConfig (HF defaults where a field is absent)."""
    f = _Fields(hf, source)
    f.refuse_unless(hf.get("position_embedding_type", "absolute") == "absolute",
                    f"uses position_embedding_type={hf.get('position_embedding_type')!r}; forgeline imports "
                    "absolute positions only")
    roberta = hf.get("model_type") == "roberta"
    return ModelConfig(
        name="roberta" if roberta else "bert", family="bert", vocab_size=f.int("vocab_size", 30522, _VOCAB),
        pad_token_id=f.int("pad_token_id", 1, _VOCAB, lo=0) if roberta else -1, next_sentence=not roberta,
        d_model=f.int("hidden_size", 768, _WIDTH), n_layers=f.int("num_hidden_layers", 12, _LAYERS),
        n_heads=f.int("num_attention_heads", 12, _HEADS), d_ff=f.int("intermediate_size", 3072, 4 * _WIDTH),
        max_positions=f.int("max_position_embeddings", 512, 1 << 20), type_vocab_size=f.int("type_vocab_size", 2, 1024),
        activation=f.activation("hidden_act", "gelu"), layer_norm_eps=f.float("layer_norm_eps", 1e-12, 0, 1),
        init_std=f.float("initializer_range", 0.02, 0, 10),
    )


def distilbert_config(hf: dict, source: str = "config.json") -> ModelConfig:
    """HF DistilBertConfig -> the BERT family without token types, pooler or NSP head."""
    f = _Fields(hf, source)
    return ModelConfig(
        name="distilbert", family="bert", vocab_size=f.int("vocab_size", 30522, _VOCAB),
        d_model=f.int("dim", 768, _WIDTH), n_layers=f.int("n_layers", 6, _LAYERS), n_heads=f.int("n_heads", 12, _HEADS),
        d_ff=f.int("hidden_dim", 3072, 4 * _WIDTH), max_positions=f.int("max_position_embeddings", 512, 1 << 20),
        type_vocab_size=0, next_sentence=False, activation=f.activation("activation", "gelu"),
        layer_norm_eps=1e-12,  # fixed in DistilBERT's code, not in its config
        init_std=f.float("initializer_range", 0.02, 0, 10),
    )


def gpt2_config(hf: dict, source: str = "config.json") -> ModelConfig:
    """HF GPT2Config fields -> ModelConfig; refuses the attention variants our GPT does not compute."""
    f = _Fields(hf, source)
    f.refuse_unless(f.bool("scale_attn_weights", True) and not f.bool("scale_attn_by_inverse_layer_idx", False),
                    "scales attention other than by 1/sqrt(head_dim); forgeline imports the standard GPT-2 "
                    "attention only")
    f.refuse_unless(not f.bool("add_cross_attention", False),
                    "has cross-attention; forgeline imports decoder-only GPT-2 only")
    n_embd = f.int("n_embd", 768, _WIDTH)
    return ModelConfig(
        name="gpt", family="gpt", vocab_size=f.int("vocab_size", 50257, _VOCAB), d_model=n_embd,
        n_layers=f.int("n_layer", 12, _LAYERS), n_heads=f.int("n_head", 12, _HEADS),
        d_ff=f.int("n_inner", 4 * n_embd, 4 * _WIDTH) if hf.get("n_inner") is not None else 4 * n_embd,
        max_positions=_positions(f.int("n_positions", 1024, 1 << 20)),
        activation=f.activation("activation_function", "gelu_new"),
        layer_norm_eps=f.float("layer_norm_epsilon", 1e-5, 0, 1), init_std=f.float("initializer_range", 0.02, 0, 10),
    )


def gpt_neox_config(hf: dict, source: str = "config.json") -> ModelConfig:
    """GPT-NeoX: the GPT family with partial rotary positions and parallel attention + FFN."""
    f = _Fields(hf, source)
    rope = hf.get("rope_parameters") or {}
    pct = _Fields(rope, source).float("partial_rotary_factor", hf.get("rotary_pct", 0.25), 1e-3, 1.0)
    bias = f.bool("attention_bias", True)
    return ModelConfig(
        name="gpt_neox", family="gpt", vocab_size=f.int("vocab_size", 50432, _VOCAB),
        d_model=f.int("hidden_size", 6144, _WIDTH), n_layers=f.int("num_hidden_layers", 44, _LAYERS),
        n_heads=f.int("num_attention_heads", 64, _HEADS), d_ff=f.int("intermediate_size", 24576, 4 * _WIDTH),
        max_positions=_positions(f.int("max_position_embeddings", 2048, 1 << 24)), positions="rotary",
        rope_theta=_rope_theta(f, "rotary_emb_base"), rotary_pct=pct, activation=f.activation("hidden_act", "gelu"),
        layer_norm_eps=f.float("layer_norm_eps", 1e-5, 0, 1), parallel_residual=f.bool("use_parallel_residual", True),
        qkv_bias=bias, out_bias=bias, tie_embeddings=f.bool("tie_word_embeddings", False),
        init_std=f.float("initializer_range", 0.02, 0, 10),
    )


def _rope_theta(f: _Fields, legacy_key: str = "rope_theta") -> float:
    """rope_theta from transformers 5's rope_parameters or the older top-level key; plain RoPE only."""
    rope = f.hf.get("rope_parameters") or f.hf.get("rope_scaling") or {}
    f.refuse_unless(isinstance(rope, dict) and rope.get("rope_type", rope.get("type", "default")) == "default",
                    f"scales its rotary positions ({rope!r}); forgeline imports plain rotary positions only")
    return _Fields(rope, f.source).float("rope_theta", f.hf.get(legacy_key, 10000.0), 1.0, 1e12)


def llama_config(hf: dict, source: str = "config.json") -> ModelConfig:
    """Llama, Mistral and Qwen2 config.json -> the GPT family with Llama's switches."""
    return ModelConfig(**_llama_fields(_Fields(hf, source)))


def _llama_fields(f: _Fields) -> dict:
    hf = f.hf
    model_type = hf["model_type"]
    d_model, n_heads = f.int("hidden_size", 4096, _WIDTH), f.int("num_attention_heads", 32, _HEADS)
    head_dim = hf.get("head_dim")
    f.refuse_unless(head_dim is None or head_dim * n_heads == d_model,
                    f"has head_dim={head_dim!r} besides hidden_size={d_model} and {n_heads} heads; forgeline "
                    "imports head_dim = hidden_size / num_attention_heads only")
    window = hf.get("sliding_window") if model_type in ("mistral", "mixtral") or hf.get("use_sliding_window") else None
    f.refuse_unless(window is None or (isinstance(window, int) and window >= 1),
                    f"has sliding_window={window!r}; forgeline needs a positive integer or null")
    attention_bias = f.bool("attention_bias", False)
    return dict(
        name=model_type, family="gpt", vocab_size=f.int("vocab_size", 32000, _VOCAB), d_model=d_model,
        n_layers=f.int("num_hidden_layers", 32, _LAYERS), n_heads=n_heads,
        n_kv_heads=f.int("num_key_value_heads", n_heads, n_heads), d_ff=f.int("intermediate_size", 11008, 4 * _WIDTH),
        max_positions=_positions(f.int("max_position_embeddings", 2048, 1 << 24), window),
        positions="rotary", rope_theta=_rope_theta(f), norm="rmsnorm", gated_ffn=True,
        activation=f.activation("hidden_act", "silu"), layer_norm_eps=f.float("rms_norm_eps", 1e-6, 0, 1),
        qkv_bias=model_type == "qwen2" or f.bool("qkv_bias", model_type == "qwen2_moe") or attention_bias, out_bias=attention_bias, ffn_bias=f.bool("mlp_bias", False),
        tie_embeddings=f.bool("tie_word_embeddings", False), init_std=f.float("initializer_range", 0.02, 0, 10),
    )


def _token_choice(f: _Fields, n_experts: int, top_k: int, every: int = 1) -> dict:
    """Dropless token-choice top-k: capacity n_experts / top_k lets an expert take every token of a
    group, so no token is ever dropped (define/moe.py); the router's aux loss is training-only."""
    f.refuse_unless(top_k <= n_experts, f"picks {top_k} experts per token out of {n_experts}")
    return dict(router="token_choice", n_experts=n_experts, router_top_k=top_k, capacity_factor=n_experts / top_k,
                moe_every=every)


def mixtral_config(hf: dict, source: str = "config.json") -> ModelConfig:
    """Mixtral: Mistral with a token-choice top-k MoE of SwiGLU experts in every layer."""
    f = _Fields(hf, source)
    fields = _llama_fields(f)
    n_experts = f.int("num_local_experts", 8, 1024, lo=2)
    fields.update(_token_choice(f, n_experts, f.int("num_experts_per_tok", 2, n_experts)), router_norm_topk=True)
    return ModelConfig(**fields)


def qwen2_moe_config(hf: dict, source: str = "config.json") -> ModelConfig:
    """Qwen2-MoE: Qwen2 with top-k experts every decoder_sparse_step layers and a gated shared expert."""
    f = _Fields(hf, source)
    fields = _llama_fields(f)
    f.refuse_unless(not hf.get("mlp_only_layers"), f"has mlp_only_layers={hf.get('mlp_only_layers')!r}; forgeline "
                    "imports MoE layers placed by decoder_sparse_step only")
    n_experts = f.int("num_experts", 60, 1024, lo=2)
    every = f.int("decoder_sparse_step", 1, fields["n_layers"])
    fields.update(_token_choice(f, n_experts, f.int("num_experts_per_tok", 4, n_experts), every),
                  router_norm_topk=f.bool("norm_topk_prob", False),
                  expert_d_ff=f.int("moe_intermediate_size", 1408, 4 * _WIDTH),
                  shared_expert_d_ff=f.int("shared_expert_intermediate_size", 5632, 4 * _WIDTH, lo=0))
    return ModelConfig(**fields)


def bart_config(hf: dict, source: str = "config.json") -> ModelConfig:
    """BART: the encoder-decoder Transformer with BART's switches (learned positions offset by 2,
    embedding LayerNorms, a logits bias). Sides of unequal width or head count are refused."""
    f = _Fields(hf, source)
    heads, ffn = f.int("encoder_attention_heads", 16, _HEADS), f.int("encoder_ffn_dim", 4096, 4 * _WIDTH)
    f.refuse_unless(f.int("decoder_attention_heads", 16, _HEADS) == heads and f.int("decoder_ffn_dim", 4096, 4 * _WIDTH) == ffn,
                    "has a decoder whose attention heads or FFN width differ from the encoder's; forgeline imports "
                    "BART with equal ones only")
    f.refuse_unless(f.bool("tie_word_embeddings", True), "has an LM head untied from its embeddings; forgeline's "
                    "encoder-decoder ties them")
    vocab = f.int("vocab_size", 50265, _VOCAB)
    return ModelConfig(
        name="bart", family="transformer", vocab_size=vocab, d_model=f.int("d_model", 1024, _WIDTH),
        n_layers=f.int("encoder_layers", 12, _LAYERS), n_decoder_layers=f.int("decoder_layers", 12, _LAYERS),
        n_heads=heads, d_ff=ffn, max_positions=f.int("max_position_embeddings", 1024, MAX_IMPORT_POSITIONS),
        positions="learned", position_offset=2, split_positions=True, embedding_norm=True, logits_bias=True,
        scale_embedding=f.bool("scale_embedding", False), activation=f.activation("activation_function", "gelu"),
        layer_norm_eps=1e-5,  # nn.LayerNorm's default, fixed in BART's code
        decoder_start_id=f.int("decoder_start_token_id", 2, vocab - 1, lo=0),
        eos_id=f.int("eos_token_id", 2, vocab - 1, lo=0) if hf.get("eos_token_id", 2) is not None else -1,
        init_std=f.float("init_std", 0.02, 0, 10),
    )


CONFIGS = {"bert": bert_config, "roberta": bert_config, "distilbert": distilbert_config, "gpt2": gpt2_config,
           "llama": llama_config, "mistral": llama_config, "qwen2": llama_config, "gpt_neox": gpt_neox_config, "mixtral": mixtral_config,
           "qwen2_moe": qwen2_moe_config, "bart": bart_config}


def check_fits_memory(config: ModelConfig, source: str) -> int:
    """The parameter count of ``config``; refuses a model whose fp32 weights exceed this machine's memory."""
    from .registry import model_class

    with torch.device("meta"):  # shapes only: nothing is allocated, whatever the config says
        model = model_class(config)(config)
    n_params = sum(p.numel() for p in model.parameters())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if 4 * n_params > memory:
        raise ConfigError(f"{source} describes {n_params / 1e9:.1f}G parameters ({4 * n_params / 2**30:.0f} GiB in "
                          f"fp32), more than this machine's {memory / 2**30:.0f} GiB of memory can hold.")
    return n_params
