"""Mixture-of-experts FFN layers: expert-choice and token-choice routers.

Both routers are written so that the ONNX graph has no TopK, no arange and no shape arithmetic,
which is what TVM's ONNX importer needs to compile them with a dynamic batch and sequence
(see docs/tvm-notes.md):

- selection is a *rank formulation*: an item is selected when fewer than ``k`` items beat it,
  counted by pairwise comparison with ties broken by index, so ``k`` may be a tensor;
- ``k`` and the capacity are computed as tensors from a count of tokens, never from Python ints;
- positions come from ``ones_like(...).cumsum(-1) - 1``.

The experts run *densely*: every expert processes every token of its group and the result is
``sum_e selected[e] * gate[e] * expert_e(x)``. That is numerically identical to gathering each
expert's tokens, running the expert, and scattering the weighted outputs back with ``index_add``
(an unselected token contributes exactly 0), but it keeps every shape static relative to the
input, so import into TVM is robust with dynamic shapes. The cost is E times the FFN FLOPs; a
sparse gather/scatter path for static shape buckets can come later.

Groups: in an encoder a group is one sequence (group size = seq). In a decoder a group is the
tokens at one position across the batch (group size = batch), so future tokens never compete
with the present for an expert.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .activations import activation_fn

_PAD_SCORE = -1.0  # softmax scores lie in [0, 1], so a padding token ranks below every real token


def expert_choice_k(group_size: int, capacity_factor: float, n_experts: int) -> int:
    """Tokens each expert takes per group: ceil(group_size * capacity_factor / n_experts), <= group_size."""
    return min(group_size, math.ceil(group_size * capacity_factor / n_experts * _CEIL_SHRINK))


# ceil(x * (1 - 1e-6)): float rounding (10 * 1.2 / 4 = 3.0000000000000004 in float64, and
# 1000 * 1.2 / 4 = 300.00003 in float32) must not add a slot. Exact for fractional parts above
# x * 1e-6, i.e. any capacity factor with two decimals and groups up to ~10^4 tokens.
_CEIL_SHRINK = 1.0 - 1e-6


def _ceil_tensor(x: torch.Tensor) -> torch.Tensor:
    return torch.ceil(x * _CEIL_SHRINK)


def _rank(scores: torch.Tensor) -> torch.Tensor:
    """Rank of each item along the last axis, 0 = best; ties go to the lower index.

    rank[..., t] = #{t' : s[t'] > s[t] or (s[t'] == s[t] and t' < t)}, as float.
    """
    index = torch.ones_like(scores[(0,) * (scores.dim() - 1)]).cumsum(-1) - 1  # (n,) 0..n-1
    earlier = index.unsqueeze(0) < index.unsqueeze(1)  # (n, n) [t, t'] = t' < t
    s_t = scores.unsqueeze(-1)  # (..., n, 1)
    s_other = scores.unsqueeze(-2)  # (..., 1, n)
    beats = (s_other > s_t) | ((s_other == s_t) & earlier)  # (..., n, n)
    return beats.float().sum(-1)  # (..., n)


class Experts(nn.Module):
    """E two-layer FFNs with stacked weights, all applied to every token (dense, see module doc)."""

    def __init__(self, config):
        super().__init__()
        E, D, F_ = config.n_experts, config.d_model, config.d_ff
        self.w1 = nn.Parameter(torch.empty(E, D, F_))
        self.b1 = nn.Parameter(torch.zeros(E, 1, F_))
        self.w2 = nn.Parameter(torch.empty(E, F_, D))
        self.b2 = nn.Parameter(torch.zeros(E, 1, D))
        self.act = activation_fn(config.activation)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x (G, n, D), weights (G, n, E) = selected * gate -> (G, n, D)."""
        h = x.unsqueeze(1) @ self.w1 + self.b1  # (G, E, n, F)
        h = self.act(h)
        y = self.dropout(h) @ self.w2 + self.b2  # (G, E, n, D)
        w = weights.transpose(1, 2).unsqueeze(-1)  # (G, E, n, 1)
        return (y * w).sum(1)  # (G, n, D)


class MoE(nn.Module):
    """Router + experts. forward(x (B,T,D), mask (B,T) float or None) -> (y (B,T,D), routing (B,T,E) int64)."""

    def __init__(self, config, causal: bool):
        super().__init__()
        self.router_kind = config.router
        self.n_experts = config.n_experts
        self.capacity_factor = config.capacity_factor
        self.top_k = config.router_top_k
        self.causal = causal
        self.gate = nn.Linear(config.d_model, config.n_experts, bias=False)
        self.experts = Experts(config)
        self.aux_loss = torch.zeros(())  # token choice: Switch load-balancing loss of the last forward

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        # Encoder: a group is a sequence. Decoder: a group is one position across the batch.
        xg = x.transpose(0, 1) if self.causal else x  # (G, n, D)
        if mask is None:
            mask = torch.ones_like(xg[..., 0])  # (G, n) 1 = real token
        elif self.causal:
            mask = mask.transpose(0, 1)  # (G, n)
        scores = F.softmax(self.gate(xg).float(), dim=-1)  # (G, n, E)
        if self.router_kind == "expert_choice":
            selected = self._expert_choice(scores, mask)
            weights = selected * scores  # (G, n, E) gate value where selected, else 0
        else:
            selected, weights = self._token_choice(scores, mask)
        y = self.experts(xg, weights.to(x.dtype))  # (G, n, D)
        routing = selected.to(torch.int64)  # (G, n, E)
        if self.causal:
            y, routing = y.transpose(0, 1), routing.transpose(0, 1)  # (B, T, *)
        return y, routing

    def _expert_choice(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each expert takes its top-k real tokens of the group; returns selected (G, n, E) float."""
        n = mask.sum(-1, keepdim=True)  # (G, 1) real tokens per group
        k = torch.minimum(_ceil_tensor(n * self.capacity_factor / self.n_experts), n)  # (G, 1)
        m = mask.unsqueeze(-1)  # (G, n, 1)
        ranked = torch.where(m > 0, scores, torch.full_like(scores, _PAD_SCORE))  # (G, n, E)
        rank = _rank(ranked.transpose(1, 2))  # (G, E, n) rank of each token within each expert
        selected = (rank < k.unsqueeze(-1)).float().transpose(1, 2)  # (G, n, E)
        return selected * m

    def _token_choice(self, scores: torch.Tensor, mask: torch.Tensor):
        """Each token picks its top-k experts, within per-expert capacity; returns (selected, weights)."""
        E, top_k = self.n_experts, self.top_k
        m = mask.unsqueeze(-1)  # (G, n, 1)
        rank = _rank(scores)  # (G, n, E) rank of each expert for each token
        chosen = (rank < top_k).float() * m  # (G, n, E)
        gate = scores if top_k == 1 else scores * chosen / (scores * chosen).sum(-1, keepdim=True).clamp_min(1e-9)
        n = mask.sum(-1, keepdim=True).unsqueeze(-1)  # (G, 1, 1)
        capacity = _ceil_tensor(n * top_k * self.capacity_factor / E)  # (G, 1, 1)
        # GShard priority: all first choices by position, then all second choices, and so on.
        # (No zeros_like/slices here: they reach TVM with unknown shapes that it cannot lower.)
        kept, taken = None, None  # taken: (G, 1, E) slots used by earlier choice levels
        for level in range(top_k):
            level_mask = (rank == float(level)).float() * m  # (G, n, E)
            position = level_mask.cumsum(1) - 1  # (G, n, E) slot index within the expert
            if taken is not None:
                position = position + taken
            level_kept = level_mask * (position < capacity).float()  # (G, n, E)
            kept = level_kept if kept is None else kept + level_kept
            level_taken = level_mask.sum(1, keepdim=True)  # (G, 1, E)
            taken = level_taken if taken is None else taken + level_taken
        # Switch load-balancing loss over real tokens: E * sum_e f_e * P_e, f from first choices.
        n_real = mask.sum().clamp_min(1.0)
        first = (rank == 0.0).float() * m
        f = first.sum((0, 1)) / n_real  # (E,)
        p = (scores * m).sum((0, 1)) / n_real  # (E,)
        if not torch.compiler.is_exporting():  # an attribute set while exporting draws a torch warning
            self.aux_loss = E * (f * p).sum()
        return kept, kept * gate
