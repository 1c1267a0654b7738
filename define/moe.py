"""Mixture-of-experts FFN layers: expert-choice and token-choice routers, with sparse dispatch.

Each expert processes only the tokens it took. Per routing group the router fills E slot lists:
an expert-choice expert has k = ceil(group_size * capacity_factor / n_experts) slots, a token-choice
expert has its capacity C = ceil(group_size * top_k * capacity_factor / n_experts). The tokens in
the slots are gathered into one (E, G*k, D) block, the E experts run as one batched FFN (a bmm
over experts, no weight broadcast), and each group's gate-weighted outputs come back to its
tokens through one small matmul with a one-hot combine matrix (``Experts.dispatch``). An MoE layer thus costs about ``capacity_factor`` (expert choice) or
``top_k * capacity_factor`` (token choice) dense FFNs, whatever the number of experts.

The same code is the ONNX graph, and it is written so that TVM's ONNX importer compiles it with a
dynamic batch and sequence (see README "Sparse expert dispatch"):

- selection is a *rank formulation*: an item is selected when fewer than ``k`` items beat it,
  counted by pairwise comparison with ties broken by index, so there is no TopK and ``k`` may be
  a tensor (the real-token count of each group, so padding never takes a slot);
- the slot list's *length* is the group size scaled by a constant rational (``_slot_positions``):
  a constant-step slice of a vector of ones, so the graph has no Range, no shape arithmetic and
  no data-dependent shape, and the block follows the group size at run time;
- slot r of expert e holds the token whose rank (or capacity position) is r, found as
  ``sum_t t * (rank[e, t] == r)``, so there is no ArgSort, TopK or ScatterElements either;
- positions come from ``ones_like(...).cumsum(-1) - 1``, never ``arange``.

With padding, a group's own k (from its real tokens) may be smaller than the slot list (from the
padded length); the extra slots get gate weight 0 and so add exactly 0. The routing outputs are
``rank < k`` as before, bit for bit.

Groups: in an encoder a group is one sequence (group size = seq). In a decoder a group is the
tokens at one position across the batch (group size = batch), so future tokens never compete
with the present for an expert. At batch 1 a decoder group is one token, every expert-choice
expert takes it (k = 1), and sparse dispatch saves nothing over running every expert; the saving
grows with the batch.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn as nn
import torch.nn.functional as F

from .activations import activation_fn
from .ffn import FeedForward

_PAD_SCORE = -1.0  # softmax scores lie in [0, 1], so a padding token ranks below every real token


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
    earlier = (index.unsqueeze(0) < index.unsqueeze(1)).float()  # (n, n) [t, t'] = t' < t
    s_t = scores.unsqueeze(-1)  # (..., n, 1)
    s_other = scores.unsqueeze(-2)  # (..., 1, n)
    # In float, not bool, as in _rank_tokens: the compiled kernel then runs in SIMD lanes (a
    # token-choice rank over 32 experts took 0.33 ms of gpt-moe-tc's 8.6 at 1x128 with bools).
    beats = (s_other > s_t).float() + (s_other == s_t).float() * earlier  # (..., n, n)
    return beats.sum(-1)  # (..., n)


def _rank_tokens(scores: torch.Tensor) -> torch.Tensor:
    """``_rank`` along the token axis of (G, n, E) scores: rank[g, t, e] among expert e's tokens.

    The pairwise comparisons are (G, n, n, E) with the static expert axis last, so a compiled
    kernel sums them in SIMD lanes over experts; ranking a (G, E, n) transpose along its
    symbolic last axis ran scalar (9.9 ms of bert-moe's 100 ms at E=32, 8x128).
    """
    index = torch.ones_like(scores[0, :, 0]).cumsum(-1) - 1  # (n,) 0..n-1
    earlier = (index.unsqueeze(0) < index.unsqueeze(1)).float().unsqueeze(-1)  # (n, n, 1) [t, t'] = t' < t
    s_t = scores.unsqueeze(2)  # (G, n, 1, E)
    s_other = scores.unsqueeze(1)  # (G, 1, n, E)
    # In float, not bool: "beats outright" and "ties and comes earlier" exclude each other, so
    # their sum is the same 0/1, and the kernel reads no bool tensor (rules.holds_bools keeps
    # a stage that does scalar).
    beats = (s_other > s_t).float() + (s_other == s_t).float() * earlier  # (G, n, n, E) [g, t, t', e]
    return beats.sum(2)  # (G, n, E)


def _slot_ratio(value: float) -> Fraction:
    """``value`` as a small fraction rounded up, so a slot list is never shorter than k."""
    ratio = Fraction(value).limit_denominator(1000)
    return ratio if ratio >= value * _CEIL_SHRINK else Fraction(math.ceil(value * 1000), 1000)


def trace_shift(model: nn.Module) -> int:
    """How much to enlarge every symbolic trace size so that each MoE slot list has >= 2 slots.

    torch.export specialises a dim that is 1 at trace time: a slot list of one slot (a group of
    2 tokens at k = ceil(2 * 2 / 32) = 1, say) would freeze the graph to groups of that size.
    The exporters trace batch at 2 and sequences above it; shifting all of them by this amount
    keeps them distinct and puts every group at the smallest size with two slots or more.
    """
    need = 2
    for layer in model.modules():
        if isinstance(layer, MoE) and layer.slot_ratio < 1:
            need = max(need, math.floor(1 / layer.slot_ratio) + 1)  # n * ratio > 1
    return need - 2


def _slot_positions(like: torch.Tensor, ratio: Fraction) -> torch.Tensor:
    """Slots 0..s-1 (float), s = min(n, ceil(n * ratio)) for n = len(like): the length carries s.

    ceil(n * p / q) is the length of a vector of n * p ones sliced with step q; both are constant
    in the graph, so s follows n at run time without shape arithmetic (see module doc).
    """
    ones = torch.ones_like(like)  # (n,)
    if ratio < 1:
        if ratio.numerator > 1:  # Concat, not repeat: TVM's importer rejects the Expand that repeat becomes
            ones = torch.cat([ones] * ratio.numerator)  # (n * p,)
        ones = ones[: ones.shape[0] : ratio.denominator]  # (ceil(n * p / q),)
    return ones.cumsum(0) - 1  # (s,)


def _slot_contents(slot_of: torch.Tensor, slots: torch.Tensor, token_index: torch.Tensor,
                   weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which token fills each slot, and the gate-weighted matrix that combines the slots.

    slot_of (G, E, n): the slot each token takes in each expert (any value >= len(slots), or a
    weight of 0, where it takes none); slots (s,); token_index (G, n) flat token positions;
    weights (G, E, n). Returns token (G, E, s) int64 (an empty slot holds token -1) and combine
    (G, n, E*s): combine[g, t, e*s + r] is token t's gate weight for slot r of expert e, 0 where
    that slot does not hold t.

    An empty slot's -1 gathers the last token, whose output the combine weights by 0. The CPU
    build reads the -1 as "empty" and runs the experts on the filled slots only
    (compile/cpu/moe_rows.py).
    """
    onehot = (slot_of.unsqueeze(2) == slots.unsqueeze(-1)).to(weights.dtype)  # (G, E, s, n)
    token = (onehot * (token_index[:, None, None, :] + 1)).sum(-1) - 1  # (G, E, s) exact: one term at most
    G, E, s, n = onehot.shape
    combine = (onehot * weights.unsqueeze(2)).permute(0, 3, 1, 2).reshape(G, n, E * s)  # (G, n, E*s)
    return token.to(torch.int64), combine


class Experts(nn.Module):
    """E two-layer FFNs with stacked weights, run as one batched FFN on each expert's own tokens.

    Gated experts (SwiGLU, Mixtral's w2(silu(w1 x) * w3 x)) keep w1 and w3 side by side in one
    (E, D, 2F) weight: one grouped GEMM, whose halves the activation then multiplies. Without
    biases (``ffn_bias=False``) b1 and b2 are zero buffers, so the chain keeps the one shape the
    CPU build's sparse rewrite knows (compile/cpu/moe_rows.py)."""

    def __init__(self, config):
        super().__init__()
        E, D, F_ = config.n_experts, config.d_model, config.expert_d_ff or config.d_ff
        self.gated = config.gated_ffn
        width = 2 * F_ if self.gated else F_  # gated: [w1 | w3]
        self.w1 = nn.Parameter(torch.empty(E, D, width))
        self.w2 = nn.Parameter(torch.empty(E, F_, D))
        if config.ffn_bias:
            self.b1 = nn.Parameter(torch.zeros(E, 1, width))
            self.b2 = nn.Parameter(torch.zeros(E, 1, D))
        else:
            self.register_buffer("b1", torch.zeros(E, 1, width), persistent=False)
            self.register_buffer("b2", torch.zeros(E, 1, D), persistent=False)
        self.act = activation_fn(config.activation)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (E, M, D), row block e for expert e -> (E, M, D)."""
        h = torch.bmm(x, self.w1) + self.b1  # (E, M, F) or (E, M, 2F)
        if self.gated:
            half = h.shape[-1] // 2
            h = self.act(h[..., :half]) * h[..., half:]  # (E, M, F)
        else:
            h = self.act(h)
        return torch.bmm(self.dropout(h), self.w2) + self.b2  # (E, M, D)

    def dispatch(self, xg: torch.Tensor, token: torch.Tensor, combine: torch.Tensor) -> torch.Tensor:
        """xg (G, n, D) tokens by group, token (G, E, s) slots, combine (G, n, E*s) -> (G, n, D).

        Each group's output is ``combine @ Y``, Y its (E*s, D) expert outputs: a matmul, not a
        scatter-add. ONNX Runtime's ScatterND adds duplicate indices from several threads at
        once, and every empty slot points at the same token, so with many experts that token's
        output came out wrong, and differently from run to run.
        """
        G, E, s = token.shape
        D = xg.shape[-1]
        index = token.transpose(0, 1).reshape(E, -1)  # (E, G*s)
        y = self(xg.reshape(-1, D)[index])  # (E, G*s, D)
        # An explicit E * s, not -1 or flatten: the exporter then writes a product of sizes that
        # TVM's importer takes (compile/onnx_fixups.py), not an unsimplified division.
        y = y.view(E, G, s, D).transpose(0, 1).reshape(G, E * s, D)  # (G, E*s, D)
        return torch.bmm(combine, y)  # (G, n, D)


class MoE(nn.Module):
    """Router + experts. forward(x (B,T,D), mask (B,T) float or None) -> (y (B,T,D), routing (B,T,E) int64)."""

    def __init__(self, config, causal: bool):
        super().__init__()
        self.router_kind = config.router
        self.n_experts = config.n_experts
        self.capacity_factor = config.capacity_factor
        self.top_k = config.router_top_k
        self.causal = causal
        self.norm_topk = config.router_norm_topk
        self.gate = nn.Linear(config.d_model, config.n_experts, bias=False)
        self.experts = Experts(config)
        if config.shared_expert_d_ff:  # Qwen2-MoE: every token also runs this expert, scaled by a sigmoid gate
            self.shared_expert = FeedForward(config, d_ff=config.shared_expert_d_ff)
            self.shared_expert_gate = nn.Linear(config.d_model, 1, bias=False)
        self.aux_loss = torch.zeros(())  # token choice: Switch load-balancing loss of the last forward
        picks = 1 if config.router == "expert_choice" else config.router_top_k
        self.slot_ratio = _slot_ratio(picks * config.capacity_factor / config.n_experts)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        # Encoder: a group is a sequence. Decoder: a group is one position across the batch.
        xg = x.transpose(0, 1) if self.causal else x  # (G, n, D)
        if mask is None:
            mask = torch.ones_like(xg[..., 0])  # (G, n) 1 = real token
        elif self.causal:
            mask = mask.transpose(0, 1)  # (G, n)
        scores = F.softmax(self.gate(xg).float(), dim=-1)  # (G, n, E)
        route = self._expert_choice if self.router_kind == "expert_choice" else self._token_choice
        selected, gate, slot_of = route(scores, mask)  # (G, n, E), (G, n, E), (G, E, n)
        weights = (selected * gate).transpose(1, 2)  # (G, E, n) gate value where selected, else 0
        slots = _slot_positions(mask[0], self.slot_ratio)  # (s,)
        token, combine = _slot_contents(slot_of, slots, _token_positions(mask), weights.to(x.dtype))
        y = self.experts.dispatch(xg, token, combine)  # (G, n, D)
        routing = selected.to(torch.int64)  # (G, n, E)
        if self.causal:
            y, routing = y.transpose(0, 1), routing.transpose(0, 1)  # (B, T, *)
        if hasattr(self, "shared_expert"):
            y = y + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)[0]  # (B, T, D)
        return y, routing

    def _expert_choice(self, scores: torch.Tensor, mask: torch.Tensor):
        """Each expert takes its top-k real tokens of the group; slot r of an expert holds its rank-r token.

        Returns selected (G, n, E) float, the gate (the scores) and slot_of = rank (G, E, n).
        """
        n = mask.sum(-1, keepdim=True)  # (G, 1) real tokens per group
        k = torch.minimum(_ceil_tensor(n * self.capacity_factor / self.n_experts), n)  # (G, 1)
        m = mask.unsqueeze(-1)  # (G, n, 1)
        ranked = scores * m + _PAD_SCORE * (1 - m)  # (G, n, E) exact: m is 0 or 1; no bool where
        rank = _rank_tokens(ranked).transpose(1, 2)  # (G, E, n) rank of each token within each expert
        selected = (rank < k.unsqueeze(-1)).float().transpose(1, 2)  # (G, n, E)
        return selected * m, scores, rank

    def _token_choice(self, scores: torch.Tensor, mask: torch.Tensor):
        """Each token picks its top-k experts, within per-expert capacity.

        Returns kept (G, n, E) float, the gate (G, n, E) and slot_of (G, E, n): the capacity slot a
        kept token fills in its expert, -1 where it fills none (not chosen, or dropped).
        """
        E, top_k = self.n_experts, self.top_k
        m = mask.unsqueeze(-1)  # (G, n, 1)
        rank = _rank(scores)  # (G, n, E) rank of each expert for each token
        chosen = (rank < top_k).float() * m  # (G, n, E)
        renormalise = top_k > 1 and self.norm_topk
        gate = scores * chosen / (scores * chosen).sum(-1, keepdim=True).clamp_min(1e-9) if renormalise else scores
        n = mask.sum(-1, keepdim=True).unsqueeze(-1)  # (G, 1, 1)
        capacity = _ceil_tensor(n * top_k * self.capacity_factor / E)  # (G, 1, 1)
        # GShard priority: all first choices by position, then all second choices, and so on.
        # (No zeros_like/slices here: they reach TVM with unknown shapes that it cannot lower.)
        kept, taken, slot = None, None, None  # taken: (G, 1, E) slots used by earlier choice levels
        for level in range(top_k):
            level_mask = (rank == float(level)).float() * m  # (G, n, E)
            position = level_mask.cumsum(1) - 1  # (G, n, E) slot index within the expert
            if taken is not None:
                position = position + taken
            level_kept = level_mask * (position < capacity).float()  # (G, n, E)
            kept = level_kept if kept is None else kept + level_kept
            slot = level_kept * position if slot is None else slot + level_kept * position
            level_taken = level_mask.sum(1, keepdim=True)  # (G, 1, E)
            taken = level_taken if taken is None else taken + level_taken
        self._record_aux_loss(scores, rank, m, mask)
        return kept, gate, (slot + kept - 1).transpose(1, 2)  # slot where kept, else -1

    def _record_aux_loss(self, scores: torch.Tensor, rank: torch.Tensor, m: torch.Tensor, mask: torch.Tensor):
        """Switch load-balancing loss over real tokens: E * sum_e f_e * P_e, f from first choices."""
        n_real = mask.sum().clamp_min(1.0)
        first = (rank == 0.0).float() * m
        f = first.sum((0, 1)) / n_real  # (E,)
        p = (scores * m).sum((0, 1)) / n_real  # (E,)
        if not torch.compiler.is_exporting():  # an attribute set while exporting draws a torch warning
            self.aux_loss = self.n_experts * (f * p).sum()


def _token_positions(mask: torch.Tensor) -> torch.Tensor:
    """(G, n) -> flat index g * n + t of every token, float (exact below 2^24 tokens)."""
    ones = torch.ones_like(mask)  # (G, n)
    return (ones.cumsum(-1) - 1) + (ones.cumsum(0) - 1) * ones.sum(-1, keepdim=True)  # (G, n)
