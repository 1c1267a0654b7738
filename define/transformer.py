"""Encoder-decoder Transformer (Vaswani et al.): post-LN, ReLU FFN, sinusoidal or learned positions.

Inputs: src_ids (B, S), tgt_ids (B, T), int64. Outputs: logits (B, T, V), then routing.{i} per MoE
layer, encoder layers first ((B, S, E)) then decoder layers ((B, T, E)). Source and target share
one byte-level vocabulary, so one embedding table serves both and is tied to the output layer.
forward(src, tgt) = decode(tgt, encode(src)); translation calls encode once and decode per step.
Encoder MoE groups are sequences; decoder MoE groups are one position across the batch (causal).

BART is a set of switches: a learned position table per side whose first ``position_offset`` (2)
rows are never read, ``scale_embedding`` off, a LayerNorm on each side's embedding sum
(``embedding_norm``), GELU, and a fixed bias on the logits (``logits_bias``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import ForgelineModel, InputSpec, ModelConfig
from .layers import Attention, causal_bias, make_ffn, sinusoidal_table


class EncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.self_attn = Attention(config)
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = make_ffn(config, layer_index, causal=False)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor):
        x = self.ln_1(x + self.dropout(self.self_attn(x)))  # (B, S, D)
        y, routing = self.ffn(x)
        return self.ln_2(x + self.dropout(y)), routing


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.self_attn = Attention(config)
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.cross_attn = Attention(config)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = make_ffn(config, layer_index, causal=True)
        self.ln_3 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, bias: torch.Tensor):
        x = self.ln_1(x + self.dropout(self.self_attn(x, bias=bias)))  # (B, T, D)
        x = self.ln_2(x + self.dropout(self.cross_attn(x, memory=memory)))  # (B, T, D)
        y, routing = self.ffn(x)
        return self.ln_3(x + self.dropout(y)), routing

    def forward_kv(self, x: torch.Tensor, memory: torch.Tensor, bias, past_k=None, past_v=None):
        """As forward, caching self-attention k/v (B, nh, P+T, hs); cross-attention k/v are
        recomputed from memory each step (cheap next to the FFN at these sizes)."""
        a, k, v = self.self_attn.forward_kv(x, bias, past_k, past_v)
        x = self.ln_1(x + self.dropout(a))  # (B, T, D)
        x = self.ln_2(x + self.dropout(self.cross_attn(x, memory=memory)))  # (B, T, D)
        y, _ = self.ffn(x)
        return self.ln_3(x + self.dropout(y)), k, v


class Transformer(ForgelineModel):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        rows = config.max_positions + config.position_offset
        if config.positions == "learned":
            self.pos = nn.Embedding(rows, config.d_model)  # the encoder's, or both sides'
            self.decoder_pos = nn.Embedding(rows, config.d_model) if config.split_positions else None
        else:
            self.register_buffer("pos_table", sinusoidal_table(rows, config.d_model), persistent=False)
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        norm = lambda: nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.embedding_norm else None  # noqa: E731
        self.encoder_embed_ln, self.decoder_embed_ln = norm(), norm()
        self.drop = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(config, i) for i in range(config.n_layers))
        self.decoder = nn.ModuleList(DecoderLayer(config, i) for i in range(config.n_decoder_layers))
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # tied
        # zeros unless a checkpoint brings one: a fixed offset per token, not trained here
        self.logits_bias = nn.Parameter(torch.zeros(1, config.vocab_size)) if config.logits_bias else None
        self.register_buffer("causal_bias", causal_bias(config.max_positions), persistent=False)

    def input_specs(self) -> list[InputSpec]:
        V = self.config.vocab_size
        return [InputSpec("src_ids", "int64", ("batch", "src_seq"), (0, V)),
                InputSpec("tgt_ids", "int64", ("batch", "tgt_seq"), (0, V))]

    def base_output_names(self) -> list[str]:
        return ["logits"]

    def _positions(self, decoder: bool) -> torch.Tensor:
        """The side's position table (P_max + offset, D); row offset + t is position t."""
        if self.config.positions != "learned":
            return self.pos_table
        return (self.decoder_pos if decoder and self.decoder_pos is not None else self.pos).weight

    def _embed(self, ids: torch.Tensor, decoder: bool, pos_ids: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T) at positions 0..T-1, or at ``pos_ids`` (B, T) -> (B, T, D)."""
        table, offset = self._positions(decoder), self.config.position_offset
        pos = table[offset: offset + ids.size(1)] if pos_ids is None else table[pos_ids + offset]  # (T, D) or (B, T, D)
        x = self.embed(ids) * self.embed_scale + pos  # (B, T, D)
        norm = self.decoder_embed_ln if decoder else self.encoder_embed_ln
        return self.drop(x if norm is None else norm(x))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, V)."""
        logits = self.lm_head(x)
        return logits if self.logits_bias is None else logits + self.logits_bias

    def _encode(self, src_ids: torch.Tensor):
        x = self._embed(src_ids, decoder=False)  # (B, S, D)
        routings = []
        for layer in self.encoder:
            x, routing = layer(x)
            if routing is not None:
                routings.append(routing)
        return x, routings

    def _decode(self, tgt_ids: torch.Tensor, memory: torch.Tensor):
        T = tgt_ids.size(1)
        bias = self.causal_bias[:T, :T]  # (T, T)
        x = self._embed(tgt_ids, decoder=True)  # (B, T, D)
        routings = []
        for layer in self.decoder:
            x, routing = layer(x, memory, bias)
            if routing is not None:
                routings.append(routing)
        return self._logits(x), routings  # (B, T, V)

    def encode(self, src_ids: torch.Tensor) -> torch.Tensor:
        """src_ids (B, S) -> memory (B, S, D)."""
        return self._encode(src_ids)[0]

    def decode(self, tgt_ids: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """tgt_ids (B, T), memory (B, S, D) -> logits (B, T, V)."""
        return self._decode(tgt_ids, memory)[0]

    # Incremental decoding for translation: targets are never padded (every row starts with the
    # same BOS at the same step), so the step needs no mask; its position is the cache length,
    # counted from the cache itself rather than by shape arithmetic.

    def decoder_prefill(self, tgt_ids: torch.Tensor, memory: torch.Tensor):
        """tgt_ids (B, T), memory (B, S, D) -> logits (B, T, V), present (Ld, 2, B, nh, T, hs)."""
        T = tgt_ids.size(1)
        return self._decode_kv(self._embed(tgt_ids, decoder=True), memory, self.causal_bias[:T, :T], None)

    def decoder_step(self, tgt_ids: torch.Tensor, memory: torch.Tensor, past_kv: torch.Tensor):
        """tgt_ids (B, 1), memory (B, S, D), past_kv (Ld, 2, B, nh, P, hs)
        -> logits (B, 1, V), present (Ld, 2, B, nh, P+1, hs)."""
        pos_ids = torch.ones_like(past_kv[0, 0, :, 0, :, 0]).sum(-1, keepdim=True).long()  # (B, 1) = P
        return self._decode_kv(self._embed(tgt_ids, decoder=True, pos_ids=pos_ids), memory, None, past_kv)

    def _decode_kv(self, x, memory, bias, past_kv):
        presents = []
        for i, layer in enumerate(self.decoder):
            past_k, past_v = (None, None) if past_kv is None else (past_kv[i, 0], past_kv[i, 1])
            x, k, v = layer.forward_kv(x, memory, bias, past_k, past_v)
            presents.append(torch.stack([k, v]))  # (2, B, nh, P+T, hs)
        return self._logits(x), torch.stack(presents)  # (B, T, V), (Ld, 2, B, nh, P+T, hs)

    def forward(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor):
        memory, enc_routings = self._encode(src_ids)
        logits, dec_routings = self._decode(tgt_ids, memory)
        return (logits, *enc_routings, *dec_routings)
