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

from .ffn import FeedForward
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


def rotary_dims(config) -> int:
    """Dims of each head that rotate: rotary_pct of head_dim, even, as pairs rotate together."""
    return 2 * int(config.head_dim * config.rotary_pct // 2)


def rotary_tables(max_positions: int, rot_dims: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (P, r) of the rotary angles pos * theta^(-2i/r), each half repeated (HF layout).

    Precomputed once and sliced or gathered per call, never built from arange(T) in the graph, so
    the exported graph keeps one symbolic sequence length (docs/tvm-notes.md)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, rot_dims, 2, dtype=torch.int64).float() / rot_dims)  # (r/2,)
    angles = torch.arange(max_positions, dtype=torch.float32).unsqueeze(1) * inv_freq  # (P, r/2)
    angles = torch.cat([angles, angles], dim=-1)  # (P, r)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rot_dims: int) -> torch.Tensor:
    """x (B, h, T, hs); cos, sin broadcastable to (B, h, T, r): the first r dims of each head rotate
    as pairs (i, i + r/2) (HF's rotate_half), the rest pass through (GPT-NeoX's partial rotary)."""
    x_rot = x[..., :rot_dims] if rot_dims < x.shape[-1] else x  # (B, h, T, r)
    half = rot_dims // 2
    rotated = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)  # (B, h, T, r)
    out = x_rot * cos + rotated * sin
    return torch.cat([out, x[..., rot_dims:]], dim=-1) if rot_dims < x.shape[-1] else out


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: no mean subtracted, no bias (Llama family)."""

    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight  # (B, T, D)


def make_norm(config) -> nn.Module:
    """The config's normalisation over the last axis: LayerNorm, or RMSNorm."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.layer_norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)


class Attention(nn.Module):
    """Multi-head attention, softmax(Q K^T / sqrt(hs)) V, written out.

    Self-attention when ``memory`` is None, cross-attention otherwise. Keys and values are
    computed from ``kv_input`` in one place so a KV cache can later concatenate past k/v there.
    With grouped-query attention (``n_kv_heads`` < ``n_heads``) k and v have only the KV heads;
    query head h reads KV head h // groups, through a broadcast over a group axis rather than a
    copy of k and v per query head. ``rotary`` (cos, sin) rotates q and k before the scores.
    """

    def __init__(self, config):
        super().__init__()
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.groups = config.n_heads // config.n_kv_heads  # query heads per KV head
        self.rot_dims = rotary_dims(config)
        self.head_dim = config.head_dim
        self.scale = 1.0 / math.sqrt(config.head_dim)
        kv_width = config.n_kv_heads * config.head_dim
        self.query = nn.Linear(config.d_model, config.d_model, bias=config.qkv_bias)
        self.key = nn.Linear(config.d_model, kv_width, bias=config.qkv_bias)
        self.value = nn.Linear(config.d_model, kv_width, bias=config.qkv_bias)
        self.output = nn.Linear(config.d_model, config.d_model, bias=config.out_bias)
        self.attn_dropout = nn.Dropout(config.dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        heads = x.shape[-1] // self.head_dim  # nh for queries, nkv for keys and values: static
        return x.unflatten(-1, (heads, self.head_dim)).transpose(1, 2)  # (B, heads, T, hs)

    def _qkv(self, x: torch.Tensor, kv_input: torch.Tensor, rotary):
        q = self._heads(self.query(x))  # (B, nh, T, hs)
        k = self._heads(self.key(kv_input))  # (B, nkv, S, hs)
        v = self._heads(self.value(kv_input))  # (B, nkv, S, hs)
        if rotary is not None:
            q = apply_rotary(q, *rotary, self.rot_dims)
            k = apply_rotary(k, *rotary, self.rot_dims)
        return q, k, v

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None):
        """x (B, T, D), memory (B, S, D) or None, bias broadcastable to (B, nh, T, S), rotary
        (cos, sin) broadcastable to (B, nh, T, r) or None -> (B, T, D)."""
        q, k, v = self._qkv(x, x if memory is None else memory, rotary)
        return self._attend(q, k, v, bias)

    def forward_kv(self, x: torch.Tensor, bias: torch.Tensor, past_k: torch.Tensor | None = None,
                   past_v: torch.Tensor | None = None, rotary=None):
        """Self-attention with a KV cache: x (B, T, D), past k/v (B, nkv, P, hs) or None, bias
        broadcastable to (B, nh, T, P+T) -> y (B, T, D), k and v (B, nkv, P+T, hs) to cache."""
        q, k, v = self._qkv(x, x, rotary)
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)  # (B, nh, P+T, hs)
            v = torch.cat([past_v, v], dim=2)  # (B, nh, P+T, hs)
        return self._attend(q, k, v, bias), k, v

    def forward_step(self, x: torch.Tensor, past_bias: torch.Tensor, past_k: torch.Tensor,
                     past_v: torch.Tensor, rotary=None):
        """One new token per row over a cache it only reads: x (B, 1, D), past k/v (B, nh, C, hs),
        past_bias (B, 1, 1, C) masking the columns that hold no real token -> y (B, 1, D), and the
        new token's k and v (B, nh, 1, hs) for the caller to write into its cache.

        The token attends to the cache and to itself without concatenating them (a step copies
        nothing of size C, and a concatenation would also lose the C + 1 axis' shape in TVM's
        importer): softmax over [cache, itself] is softmax over the cache, scaled by 1 - w, plus
        w for itself, where w = sigmoid(own score - logsumexp(cache scores)). Both products with
        the cache are a multiply and a sum (along hs for k, along C for v), which read it in place
        once: as matmuls with one query row, TVM first copied k transposed and ran the weighted
        sum over v 5-10x slower (measured, gpt-small batch 8). Inference only: no dropout.
        With grouped-query attention the caches hold the KV heads only, (B, nkv, C, hs)."""
        q, k, v = self._qkv(x, x, rotary)  # (B, nh, 1, hs), (B, nkv, 1, hs) x 2
        g = self.groups
        scores = self._grouped(q, past_k, lambda a, b: (a * b).sum(-1))  # (B, nh, C)
        scores = scores.unsqueeze(2) * self.scale + past_bias  # (B, nh, 1, C)
        own = (q * self._per_query_head(k)).sum(-1, keepdim=True) * self.scale  # (B, nh, 1, 1)
        w = torch.sigmoid(own - torch.logsumexp(scores, dim=-1, keepdim=True))  # (B, nh, 1, 1) share of itself
        p = F.softmax(scores, dim=-1).transpose(-2, -1)  # (B, nh, C, 1)
        past = self._grouped(p, past_v, lambda a, b: (a * b).sum(-2, keepdim=True))  # (B, nh, 1, hs)
        y = (1 - w) * past + w * self._per_query_head(v)  # (B, nh, 1, hs)
        return self.output(y.transpose(1, 2).flatten(-2)), k, v

    def _grouped(self, per_query: torch.Tensor, per_kv: torch.Tensor, op) -> torch.Tensor:
        """op(a (B, nh, ...), b (B, nkv, ...)) with query head h against KV head h // groups."""
        if self.groups == 1:
            return op(per_query, per_kv)
        a = per_query.unflatten(1, (self.n_kv_heads, self.groups))  # (B, nkv, g, ...)
        return op(a, per_kv.unsqueeze(2)).flatten(1, 2)  # (B, nh, ...)

    def _per_query_head(self, kv: torch.Tensor) -> torch.Tensor:
        """(B, nkv, 1, hs) -> (B, nh, 1, hs): one token's k or v, repeated per query head of its group."""
        if self.groups == 1:
            return kv
        return torch.cat([kv.unsqueeze(2)] * self.groups, dim=2).flatten(1, 2)  # (B, nh, 1, hs)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None):
        if self.groups > 1:  # a group axis that k and v broadcast over: (B, nkv, g, T, hs)
            q, k, v = q.unflatten(1, (self.n_kv_heads, self.groups)), k.unsqueeze(2), v.unsqueeze(2)
            bias = bias.unsqueeze(1) if bias is not None and bias.dim() == 4 else bias  # (B, 1, 1, T, S)
        att = (q @ k.transpose(-2, -1)) * self.scale  # (B, nh, T, S) or (B, nkv, g, T, S)
        if bias is not None:
            att = att + bias
        att = self.attn_dropout(F.softmax(att, dim=-1))
        y = att @ v  # (B, nh, T, hs) or (B, nkv, g, T, hs)
        y = (y.flatten(1, 2) if self.groups > 1 else y).transpose(1, 2).flatten(-2)  # (B, T, D)
        return self.output(y)


def make_ffn(config, layer_index: int, causal: bool) -> nn.Module:
    """MoE in layers (moe_every-1, 2*moe_every-1, ...) when the config has a router, else dense."""
    if config.router != "none" and (layer_index + 1) % config.moe_every == 0:
        return MoE(config, causal=causal)
    return FeedForward(config)
