"""Layers shared by the families: attention, the dense FFN, activations, position tables.

Everything here is written for the ONNX -> TVM path with a dynamic batch and sequence: attention
is written out (no scaled_dot_product_attention), head splits use unflatten/flatten rather than
view with symbolic sizes, and masks are additive float tensors sliced from registered buffers.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .activations import activation_fn
from .moe import MoE

NEG_INF = -1e9  # additive mask value: exp() of it underflows to exactly 0 in fp32, and never NaNs


def causal_bias(max_positions: int) -> torch.Tensor:
    """(P, P) additive mask: 0 where key <= query, NEG_INF above the diagonal. Slice [:T, :T]."""
    allowed = torch.tril(torch.ones(max_positions, max_positions, dtype=torch.bool))
    return torch.zeros(max_positions, max_positions).masked_fill(~allowed, NEG_INF)  # (P, P)


def padding_bias(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, S) int mask, 1 = real token, 0 = pad -> (B, 1, 1, S) additive float mask."""
    return ((1.0 - attention_mask.float()) * NEG_INF).unsqueeze(1).unsqueeze(2)  # (B, 1, 1, S)


def sinusoidal_table(max_positions: int, d_model: int) -> torch.Tensor:
    """Vaswani et al. sin/cos position table, (P, D)."""
    position = torch.arange(max_positions, dtype=torch.float32).unsqueeze(1)  # (P, 1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_positions, d_model)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div[: d_model // 2])
    return table  # (P, D)


class Attention(nn.Module):
    """Multi-head attention, softmax(Q K^T / sqrt(hs)) V, written out.

    Self-attention when ``memory`` is None, cross-attention otherwise. Keys and values are
    computed from ``kv_input`` in one place so a KV cache can later concatenate past k/v there.
    """

    def __init__(self, config):
        super().__init__()
        self.n_heads = config.n_heads
        self.scale = 1.0 / math.sqrt(config.head_dim)
        self.query = nn.Linear(config.d_model, config.d_model)
        self.key = nn.Linear(config.d_model, config.d_model)
        self.value = nn.Linear(config.d_model, config.d_model)
        self.output = nn.Linear(config.d_model, config.d_model)
        self.attn_dropout = nn.Dropout(config.dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)  # (B, nh, T, hs)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None, bias: torch.Tensor | None = None):
        """x (B, T, D), memory (B, S, D) or None, bias broadcastable to (B, nh, T, S) -> (B, T, D)."""
        kv_input = x if memory is None else memory
        q = self._heads(self.query(x))  # (B, nh, T, hs)
        k = self._heads(self.key(kv_input))  # (B, nh, S, hs)
        v = self._heads(self.value(kv_input))  # (B, nh, S, hs)
        return self._attend(q, k, v, bias)

    def forward_kv(self, x: torch.Tensor, bias: torch.Tensor, past_k: torch.Tensor | None = None,
                   past_v: torch.Tensor | None = None):
        """Self-attention with a KV cache: x (B, T, D), past k/v (B, nh, P, hs) or None, bias
        broadcastable to (B, nh, T, P+T) -> y (B, T, D), k and v (B, nh, P+T, hs) to cache."""
        q = self._heads(self.query(x))  # (B, nh, T, hs)
        k = self._heads(self.key(x))  # (B, nh, T, hs)
        v = self._heads(self.value(x))  # (B, nh, T, hs)
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)  # (B, nh, P+T, hs)
            v = torch.cat([past_v, v], dim=2)  # (B, nh, P+T, hs)
        return self._attend(q, k, v, bias), k, v

    def forward_step(self, x: torch.Tensor, past_bias: torch.Tensor, past_k: torch.Tensor,
                     past_v: torch.Tensor):
        """One new token per row over a cache it only reads: x (B, 1, D), past k/v (B, nh, C, hs),
        past_bias (B, 1, 1, C) masking the columns that hold no real token -> y (B, 1, D), and the
        new token's k and v (B, nh, 1, hs) for the caller to write into its cache.

        The token attends to the cache and to itself without concatenating them (a step copies
        nothing of size C, and a concatenation would also lose the C + 1 axis' shape in TVM's
        importer): softmax over [cache, itself] is softmax over the cache, scaled by 1 - w, plus
        w for itself, where w = sigmoid(own score - logsumexp(cache scores)). Both products with
        the cache are a multiply and a sum (along hs for k, along C for v), which read it in place
        once: as matmuls with one query row, TVM first copied k transposed and ran the weighted
        sum over v 5-10x slower (measured, gpt-small batch 8). Inference only: no dropout."""
        q = self._heads(self.query(x))  # (B, nh, 1, hs)
        k = self._heads(self.key(x))  # (B, nh, 1, hs)
        v = self._heads(self.value(x))  # (B, nh, 1, hs)
        scores = (past_k * q).sum(-1).unsqueeze(2) * self.scale + past_bias  # (B, nh, 1, C)
        own = (q * k).sum(-1, keepdim=True) * self.scale  # (B, nh, 1, 1)
        w = torch.sigmoid(own - torch.logsumexp(scores, dim=-1, keepdim=True))  # (B, nh, 1, 1) share of itself
        p = F.softmax(scores, dim=-1).transpose(-2, -1)  # (B, nh, C, 1)
        y = (1 - w) * (p * past_v).sum(-2, keepdim=True) + w * v  # (B, nh, 1, hs)
        return self.output(y.transpose(1, 2).flatten(-2)), k, v

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None):
        att = (q @ k.transpose(-2, -1)) * self.scale  # (B, nh, T, S)
        if bias is not None:
            att = att + bias
        att = self.attn_dropout(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).flatten(-2)  # (B, T, D)
        return self.output(y)


class FeedForward(nn.Module):
    """Linear - activation - Linear. forward returns (y, None) to match MoE's (y, routing)."""

    def __init__(self, config):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.d_ff)
        self.fc2 = nn.Linear(config.d_ff, config.d_model)
        self.act = activation_fn(config.activation)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        return self.dropout(self.fc2(self.act(self.fc1(x)))), None  # (B, T, D)


def make_ffn(config, layer_index: int, causal: bool) -> nn.Module:
    """MoE in layers (moe_every-1, 2*moe_every-1, ...) when the config has a router, else dense."""
    if config.router != "none" and (layer_index + 1) % config.moe_every == 0:
        return MoE(config, causal=causal)
    return FeedForward(config)
