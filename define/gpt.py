"""GPT: a causal decoder, pre-LN like GPT-2, GELU FFN, learned positions, tied LM head.

Inputs: input_ids (B, T) int64. Outputs: logits (B, T, V), then routing.{i} (B, T, E) int64 per
MoE layer. MoE groups are the tokens at one position across the batch (see moe.py), so routing
stays causal. Parameter names follow HF GPT-2 where natural (wte, wpe, h.{i}.ln_1, ln_f, lm_head);
attention uses separate query/key/value projections, which a weight import splits from c_attn.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import ForgelineModel, InputSpec, ModelConfig
from .layers import Attention, causal_bias, make_ffn


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.mlp = make_ffn(config, layer_index, causal=True)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor):
        x = x + self.dropout(self.attn(self.ln_1(x), bias=bias))  # (B, T, D)
        y, routing = self.mlp(self.ln_2(x))  # (B, T, D), (B, T, E) or None
        return x + self.dropout(y), routing


class GPT(ForgelineModel):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.max_positions, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as GPT-2
        self.register_buffer("causal_bias", causal_bias(config.max_positions), persistent=False)

    def input_specs(self) -> list[InputSpec]:
        return [InputSpec("input_ids", "int64", ("batch", "seq"), (0, self.config.vocab_size))]

    def base_output_names(self) -> list[str]:
        return ["logits"]

    def forward(self, input_ids: torch.Tensor):
        T = input_ids.size(1)
        # Slicing tables (not arange) keeps one symbolic seq length in the graph (TVM-NOTES.md).
        # A KV cache would slice [past:past+T] here and concatenate past k/v in Attention.
        pos = self.wpe.weight[:T]  # (T, D)
        bias = self.causal_bias[:T, :T]  # (T, T)
        x = self.drop(self.wte(input_ids) + pos)  # (B, T, D)
        routings = []
        for block in self.h:
            x, routing = block(x, bias)
            if routing is not None:
                routings.append(routing)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return (logits, *routings)
