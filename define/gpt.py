"""GPT: a causal decoder, pre-LN like GPT-2, GELU FFN, learned positions, tied LM head.

The Llama family (Llama, Mistral, Qwen2) and GPT-NeoX are config switches of this one family:
RMSNorm (``norm``), rotary positions (``positions="rotary"``, ``rope_theta``, ``rotary_pct``),
a gated SwiGLU FFN (``gated_ffn``, ``activation="silu"``), grouped-query attention
(``n_kv_heads``; the KV cache then holds the KV heads only), bias switches, an untied LM head
(``tie_embeddings``) and GPT-NeoX's parallel attention + FFN (``parallel_residual``).

Inputs: input_ids (B, T) int64. Outputs: logits (B, T, V), then routing.{i} (B, T, E) int64 per
MoE layer. MoE groups are the tokens at one position across the batch (see moe.py), so routing
stays causal. Parameter names follow HF GPT-2 where natural (wte, wpe, h.{i}.ln_1, ln_f, lm_head);
attention uses separate query/key/value projections, which a weight import splits from c_attn.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import ForgelineModel, InputSpec, ModelConfig
from .layers import Attention, causal_bias, make_ffn, make_norm, padding_bias, rotary_dims, rotary_tables


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = Attention(config)
        self.ln_2 = make_norm(config)
        self.mlp = make_ffn(config, layer_index, causal=True)
        self.dropout = nn.Dropout(config.dropout)
        self.parallel = config.parallel_residual

    def forward(self, x: torch.Tensor, bias: torch.Tensor, rotary=None):
        a = self.dropout(self.attn(self.ln_1(x), bias=bias, rotary=rotary))  # (B, T, D)
        y, routing = self.mlp(self.ln_2(x if self.parallel else x + a))  # (B, T, D), (B, T, E) or None
        return x + a + self.dropout(y), routing

    def forward_kv(self, x: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor, rotary=None):
        """x (B, T, D), mask (B, T) float 1 = real (MoE never routes padding) -> x, k, v (B, nkv, T, hs)."""
        a, k, v = self.attn.forward_kv(self.ln_1(x), bias, rotary=rotary)
        return self._feed_forward(x, self.dropout(a), mask), k, v

    def forward_step(self, x: torch.Tensor, past_bias: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
                     rotary=None):
        """x (B, 1, D) one real token per row, past k/v (B, nkv, C, hs) read only -> x, k, v (B, nkv, 1, hs)."""
        a, k, v = self.attn.forward_step(self.ln_1(x), past_bias, past_k, past_v, rotary=rotary)
        return self._feed_forward(x, self.dropout(a), torch.ones_like(x[..., 0])), k, v

    def _feed_forward(self, x: torch.Tensor, a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y, _ = self.mlp(self.ln_2(x if self.parallel else x + a), mask)  # (B, T, D); MoE never routes where mask is 0
        return x + a + self.dropout(y)


class GPT(ForgelineModel):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.rotary = config.positions == "rotary"
        if self.rotary:
            cos, sin = rotary_tables(config.max_positions, rotary_dims(config), config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)  # (P, r)
            self.register_buffer("rope_sin", sin, persistent=False)  # (P, r)
        else:
            self.wpe = nn.Embedding(config.max_positions, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # tied, as GPT-2
        self.register_buffer("causal_bias", causal_bias(config.max_positions), persistent=False)

    def _embed(self, input_ids: torch.Tensor, pos_ids: torch.Tensor | None):
        """Token embeddings plus learned positions, or the rotary (cos, sin) for attention.

        pos_ids (B, T) gathers rows; None slices the first T (one symbolic length, no arange).
        Returns x (B, T, D) and rotary: None, or (cos, sin) broadcastable to (B, nh, T, r)."""
        x = self.wte(input_ids)  # (B, T, D)
        T = input_ids.size(1)
        if not self.rotary:
            pos = self.wpe.weight[:T] if pos_ids is None else self.wpe(pos_ids)  # (T, D) or (B, T, D)
            return self.drop(x + pos), None
        if pos_ids is None:
            return self.drop(x), (self.rope_cos[:T], self.rope_sin[:T])  # (T, r)
        return self.drop(x), (self.rope_cos[pos_ids].unsqueeze(1), self.rope_sin[pos_ids].unsqueeze(1))  # (B, 1, T, r)

    def input_specs(self) -> list[InputSpec]:
        return [InputSpec("input_ids", "int64", ("batch", "seq"), (0, self.config.vocab_size))]

    def base_output_names(self) -> list[str]:
        return ["logits"]

    def forward(self, input_ids: torch.Tensor):
        T = input_ids.size(1)
        # Slicing tables (not arange) keeps one symbolic seq length in the graph (docs/tvm-notes.md).
        bias = self.causal_bias[:T, :T]  # (T, T)
        x, rotary = self._embed(input_ids, None)  # (B, T, D)
        routings = []
        for block in self.h:
            x, routing = block(x, bias, rotary)
            if routing is not None:
                routings.append(routing)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return (logits, *routings)

    # Incremental decoding. Prompts are left-padded: attention_mask is 1 for real tokens, 0 for
    # padding; a token's position is the number of real tokens before it, so padding shifts
    # nothing. MoE layers get the mask, so no expert ever takes a padding token. The prefill
    # returns one cache tensor, present (L, 2, B, nh, T, hs); decode steps read per-layer caches
    # (B, nh, C, hs) that the caller preallocates, and return only the new token's k and v, so a
    # step costs O(new tokens) in copies (runtime/tasks/kv_cache.py writes them in place). With
    # grouped-query attention nh in these shapes is the number of KV heads.

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """input_ids, attention_mask (B, T) int64 -> logits (B, T, V), present (L, 2, B, nh, T, hs)."""
        T = input_ids.size(1)
        pos_ids = (attention_mask.cumsum(1) - 1).clamp_min(0)  # (B, T); pads sit at 0, masked anyway
        bias = self.causal_bias[:T, :T] + padding_bias(attention_mask)  # (B, 1, T, T)
        x, rotary = self._embed(input_ids, pos_ids)  # (B, T, D)
        m = attention_mask.to(x.dtype)  # (B, T)
        presents = []
        for block in self.h:
            x, k, v = block.forward_kv(x, bias, m, rotary)
            presents.append(torch.stack([k, v]))  # (2, B, nh, T, hs)
        return self.lm_head(self.ln_f(x)), torch.stack(presents)  # (B, T, V), (L, 2, B, nh, T, hs)

    def decode_step(self, input_ids: torch.Tensor, past_mask: torch.Tensor, *past: torch.Tensor):
        """input_ids (B, 1), past_mask (B, C) 1 = a real token in that cache column, past = k_0, v_0,
        k_1, v_1, ... each (B, nh, C, hs) -> logits (B, 1, V), new_kv (L, 2, B, nh, 1, hs).

        Columns whose mask is 0 (padding, or room not yet written) are never attended to, so the
        caller may pass a cache longer than what it holds. The new token is always real."""
        pos_ids = past_mask.sum(1, keepdim=True)  # (B, 1) real tokens before it
        bias = padding_bias(past_mask)  # (B, 1, 1, C); the token attends to itself as well
        x, rotary = self._embed(input_ids, pos_ids)  # (B, 1, D); rotary continues at the real-token count
        news = []
        for i, block in enumerate(self.h):
            x, k, v = block.forward_step(x, bias, past[2 * i], past[2 * i + 1], rotary)
            news.append(torch.stack([k, v]))  # (2, B, nh, 1, hs)
        return self.lm_head(self.ln_f(x)), torch.stack(news)  # (B, 1, V), (L, 2, B, nh, 1, hs)
