"""ModelConfig, InputSpec and the ForgelineModel base class that every family implements."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from forgeline.runtime.errors import ConfigError
from forgeline.runtime.format import TensorSpec
from forgeline.runtime.inputs import random_inputs

from .moe import Experts, MoE

FAMILIES = ("transformer", "bert", "gpt")
ROUTERS = ("none", "expert_choice", "token_choice")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")
POSITIONS = ("sinusoidal", "learned", "rotary")
NORMS = ("layernorm", "rmsnorm")


@dataclass
class ModelConfig:
    name: str = "gpt"  # registry name this config came from; recorded in artifacts
    family: str = "gpt"  # which model class builds it: transformer | bert | gpt
    router: str = "none"  # FFN kind: none (dense) | expert_choice | token_choice
    vocab_size: int = 264  # 256 bytes + 8 specials for the byte-level tokenizer
    d_model: int = 32  # residual stream width
    n_layers: int = 2  # blocks (the encoder's, for transformer)
    n_decoder_layers: int = 0  # transformer decoder blocks; 0 = same as n_layers
    n_heads: int = 2  # attention heads; must divide d_model
    d_ff: int = 64  # FFN hidden width (per expert for MoE)
    max_positions: int = 64  # longest sequence; sizes position tables and the causal mask
    type_vocab_size: int = 2  # BERT segment ids (sentence A / B); 0 = no token_type_ids input (DistilBERT)
    positions: str = "sinusoidal"  # transformer: sinusoidal | learned; gpt: rotary, else a learned table
    position_offset: int = 0  # learned table rows skipped before position 0 (BART: 2)
    split_positions: bool = False  # transformer: encoder and decoder each have a learned position table (BART)
    scale_embedding: bool = True  # transformer: token embeddings times sqrt(d_model) (BART: scale_embedding)
    embedding_norm: bool = False  # transformer: LayerNorm on each side's embedding sum (BART's layernorm_embedding)
    logits_bias: bool = False  # transformer: a (1, V) bias added to the logits (BART's final_logits_bias)
    decoder_start_id: int = -1  # transformer: the id decoding starts from (BART: 2); -1 = the tokenizer's bos
    eos_id: int = -1  # transformer: the id that ends a translation (HF eos_token_id); -1 = the tokenizer's eos
    pad_token_id: int = -1  # >= 0: positions count non-pad tokens from pad_token_id + 1 (RoBERTa)
    rope_theta: float = 10000.0  # rotary base (Llama's rope_theta, GPT-NeoX's rotary_emb_base)
    rotary_pct: float = 1.0  # share of each head's dims that rotate (GPT-NeoX's rotary_pct)
    norm: str = "layernorm"  # layernorm | rmsnorm (Llama family: no mean, no bias)
    gated_ffn: bool = False  # FFN is down(act(gate(x)) * up(x)) (SwiGLU with silu) instead of fc2(act(fc1(x)))
    n_kv_heads: int = 0  # grouped-query attention: key/value heads (0 = n_heads); must divide n_heads
    qkv_bias: bool = True  # query/key/value projections have a bias (Llama: no; Qwen2: yes)
    out_bias: bool = True  # attention output projection has a bias
    ffn_bias: bool = True  # FFN linears have biases
    parallel_residual: bool = False  # x + attn(ln_1(x)) + mlp(ln_2(x)) (GPT-NeoX) instead of sequential
    tie_embeddings: bool = True  # LM head shares the token embedding (GPT-2; Llama-7B does not)
    next_sentence: bool = True  # BERT's pooler and NSP head (RoBERTa and DistilBERT have neither)
    activation: str = "gelu"  # FFN nonlinearity: relu | gelu | gelu_tanh (GPT-2)
    layer_norm_eps: float = 1e-5  # BERT uses 1e-12; matters for importing HF weights
    dropout: float = 0.0  # training only; models are built in eval mode
    init_std: float = 0.02  # normal init std of weights (GPT-2 / BERT)
    n_experts: int = 4  # experts per MoE layer
    capacity_factor: float = 2.0  # expert choice: k = ceil(group*cf/E); token choice: C = ceil(group*top_k*cf/E)
    router_top_k: int = 2  # token choice: experts per token (1 = Switch, 2 = GShard)
    moe_every: int = 2  # MoE replaces the FFN in every moe_every-th layer (1 = all layers)
    router_norm_topk: bool = True  # token choice top-k > 1: renormalise the k gate values to sum 1 (Mixtral)
    expert_d_ff: int = 0  # hidden width of each expert (0 = d_ff; Qwen2-MoE's moe_intermediate_size)
    shared_expert_d_ff: int = 0  # > 0: an always-on expert of this width, with a sigmoid gate (Qwen2-MoE)
    head_dim: int = field(init=False)  # derived: d_model // n_heads

    def __post_init__(self):
        self._check_types()
        self._check_choice("family", FAMILIES)
        self._check_choice("router", ROUTERS)
        self._check_choice("activation", ACTIVATIONS)
        self._check_choice("positions", POSITIONS)
        self._check_choice("norm", NORMS)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_positions",
                     "n_experts", "router_top_k", "moe_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1.")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}.")
        if self.n_kv_heads < 0 or (self.n_kv_heads and self.n_heads % self.n_kv_heads):
            raise ConfigError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} (0 = n_heads).")
        if not 0 < self.rotary_pct <= 1 or self.rope_theta <= 0:
            raise ConfigError(f"rotary_pct={self.rotary_pct} must lie in (0, 1] and rope_theta={self.rope_theta} "
                              "must be positive.")
        if self.positions == "rotary" and self.family != "gpt":
            raise ConfigError(f"positions='rotary' is a gpt option; the {self.family} family has none.")
        if self.expert_d_ff < 0 or self.shared_expert_d_ff < 0:
            raise ConfigError(f"expert_d_ff={self.expert_d_ff} and shared_expert_d_ff={self.shared_expert_d_ff} "
                              "must be 0 or more.")
        if self.split_positions and self.positions != "learned":
            raise ConfigError("split_positions needs positions='learned': a sinusoidal table has no weights to split.")
        for name in ("decoder_start_id", "eos_id"):
            if not -1 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(f"{name}={getattr(self, name)} must be a token id below {self.vocab_size} (-1 = none).")
        if self.position_offset < 0:
            raise ConfigError(f"position_offset={self.position_offset} must be 0 or more.")
        if self.type_vocab_size < 0:
            raise ConfigError(f"type_vocab_size={self.type_vocab_size} must be 0 (no token types) or more.")
        if self.n_decoder_layers < 0:
            raise ConfigError(f"n_decoder_layers={self.n_decoder_layers} must be 0 (same as n_layers) or more.")
        if self.family == "transformer" and self.n_decoder_layers == 0:
            self.n_decoder_layers = self.n_layers
        if self.positions == "sinusoidal" and self.d_model % 2:
            raise ConfigError(f"d_model={self.d_model} must be even for sinusoidal positions.")
        if self.router != "none":
            if self.n_experts < 2:
                raise ConfigError(f"n_experts={self.n_experts} must be at least 2 for router={self.router}.")
            if self.capacity_factor <= 0:
                raise ConfigError(f"capacity_factor={self.capacity_factor} must be positive.")
            if self.router == "token_choice" and self.router_top_k > self.n_experts:
                raise ConfigError(f"router_top_k={self.router_top_k} exceeds n_experts={self.n_experts}.")
            if self.moe_every > self.n_layers:
                raise ConfigError(f"moe_every={self.moe_every} exceeds n_layers={self.n_layers}: no layer would be MoE.")
        self.head_dim = self.d_model // self.n_heads
        self.n_kv_heads = self.n_kv_heads or self.n_heads

    def _check_types(self):
        """Each field holds its declared type (a JSON config may say "vocab_size": "32000")."""
        kinds = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
        for f in dataclasses.fields(self):
            if not f.init or f.type not in kinds:
                continue
            value = getattr(self, f.name)
            if not isinstance(value, kinds[f.type]) or (f.type != "bool" and isinstance(value, bool)):
                raise ConfigError(f"{f.name}={value!r} must be of type {f.type}, not {type(value).__name__}.")

    def _check_choice(self, name: str, choices: tuple[str, ...]):
        if getattr(self, name) not in choices:
            raise ConfigError(f"{name}={getattr(self, name)!r} is not one of {', '.join(choices)}.")

    def to_dict(self) -> dict:
        """The init fields only (derived fields are recomputed), JSON-serialisable."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(d) - known - {"head_dim"})
        if unknown:
            raise ConfigError(f"unknown config fields {unknown}; valid fields are {sorted(known)}.")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class InputSpec:
    name: str  # graph input name
    dtype: str  # numpy dtype name, e.g. "int64"
    dims: tuple[str, ...]  # symbolic dim names, e.g. ("batch", "seq")
    value_range: tuple[int, int] | None = None  # [lo, hi) for ids; None = any value


class ForgelineModel(nn.Module):
    """Base of every family: declares its inputs/outputs and makes valid example inputs."""

    config: ModelConfig

    def input_specs(self) -> list[InputSpec]:
        raise NotImplementedError

    def base_output_names(self) -> list[str]:
        raise NotImplementedError

    def dim_limits(self) -> dict[str, int | None]:
        """Max size of each symbolic dim (None = unbounded)."""
        limits: dict[str, int | None] = {}
        for spec in self.input_specs():
            for dim in spec.dims:
                limits[dim] = None if dim == "batch" else self.config.max_positions
        return limits

    def moe_layers(self) -> list[nn.Module]:
        """MoE modules in routing-output order (encoder before decoder)."""
        return [m for m in self.modules() if isinstance(m, MoE)]

    def output_names(self) -> list[str]:
        return self.base_output_names() + [f"routing.{i}" for i in range(len(self.moe_layers()))]

    def aux_loss(self) -> torch.Tensor:
        """Sum of the token-choice load-balancing losses of the last forward (0 without any)."""
        losses = [m.aux_loss for m in self.moe_layers()]
        return sum(losses[1:], losses[0]) if losses else torch.zeros(())

    def example_inputs(self, dims: dict[str, int], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Valid random inputs, in input_specs order, for the given symbolic dim sizes."""
        specs = [TensorSpec(s.name, s.dtype, s.dims, s.value_range) for s in self.input_specs()]
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))  # one draw: the generator moves on
        arrays = random_inputs(specs, dims, seed, limits=self.dim_limits())
        return tuple(torch.from_numpy(arrays[s.name]) for s in specs)

    def _init_weights(self, module: nn.Module):
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, Experts):
            nn.init.normal_(module.w1, std=std)
            nn.init.normal_(module.w2, std=std)
            nn.init.zeros_(module.b1)
            nn.init.zeros_(module.b2)
