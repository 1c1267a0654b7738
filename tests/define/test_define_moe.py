"""MoE routers against independent references and hand computations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from forgeline.define import get_config, routing_stats
from forgeline.define.moe import MoE


def make_moe(router="expert_choice", causal=False, seed=0, **overrides):
    config = get_config("gpt-moe", "tiny", router=router, **overrides)
    torch.manual_seed(seed)
    moe = MoE(config, causal=causal).eval()
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return moe, config


def expert_reference(moe, e, x):
    """Expert e applied to tokens x (N, D), written out from the stacked weights."""
    ex = moe.experts
    return moe.experts.act(x @ ex.w1[e] + ex.b1[e, 0]) @ ex.w2[e] + ex.b2[e, 0]


def expert_choice_reference(moe, x, mask, causal):
    """torch.topk per group per expert, gather, expert, weighted index_add scatter."""
    groups = x.transpose(0, 1) if causal else x  # (G, n, D)
    gmask = mask.transpose(0, 1) if causal else mask
    G, n, D = groups.shape
    E = moe.n_experts
    out = torch.zeros_like(groups)
    selected = torch.zeros(G, n, E, dtype=torch.int64)
    for g in range(G):
        real = torch.nonzero(gmask[g]).flatten()  # tokens that may be chosen
        scores = F.softmax(groups[g] @ moe.gate.weight.T, dim=-1)  # (n, E)
        k = min(len(real), math.ceil(len(real) * moe.capacity_factor / E))
        for e in range(E):
            top = torch.topk(scores[real, e], k).indices
            tokens = real[top]
            selected[g, tokens, e] = 1
            y = expert_reference(moe, e, groups[g, tokens]) * scores[tokens, e, None]
            out[g].index_add_(0, tokens, y)
    if causal:
        out, selected = out.transpose(0, 1), selected.transpose(0, 1)
    return out, selected


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 10), (5, 7), (3, 1)])
def test_expert_choice_matches_topk_reference(causal, shape):
    moe, config = make_moe(causal=causal)
    B, T = shape
    x = torch.randn(B, T, config.d_model, generator=torch.Generator().manual_seed(B * T))
    mask = torch.ones(B, T)
    if not causal and T > 2:
        mask[1, T - 2:] = 0  # encoder padding
    with torch.no_grad():
        y, routing = moe(x, None if causal else mask)
        y_ref, sel_ref = expert_choice_reference(moe, x, mask, causal)
    assert routing.dtype == torch.int64 and routing.shape == (B, T, config.n_experts)
    torch.testing.assert_close(routing, sel_ref, rtol=0, atol=0)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n, capacity, experts, k", [
    (10, 2.0, 4, 5),  # ceil(10 * 2 / 4)
    (9, 2.0, 4, 5),  # ceil(4.5)
    (10, 8.0, 4, 10),  # ceil(20), capped at the group size
    (10, 1.2, 4, 3),  # 10 * 1.2 / 4 is 3.0000000000000004 in float64: still 3
    (1000, 1.2, 4, 300),  # 300.00003 in float32: still 300
    (3, 1.1, 3, 2),  # ceil(1.1)
])
def test_each_expert_takes_k_tokens_hand_computed(n, capacity, experts, k):
    """The layer's own k, computed as a tensor in the graph, against ceil(n * c / E) by hand."""
    moe, config = make_moe(capacity_factor=capacity, n_experts=experts)
    x = torch.randn(1, n, config.d_model, generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        _, routing = moe(x, torch.ones(1, n))  # (1, n, E): the tokens each expert took
    assert routing.sum(1).tolist() == [[k] * experts]


def test_expert_choice_never_selects_padding():
    moe, config = make_moe()
    x = torch.randn(3, 9, config.d_model) * 5
    mask = torch.ones(3, 9)
    mask[1, 4:] = 0
    mask[2, 1:] = 0
    with torch.no_grad():
        y, routing = moe(x, mask)
    assert routing[mask == 0].sum() == 0
    assert (y[mask == 0] == 0).all()
    assert (routing[2, 0] == 1).all()  # a group of one real token: k = min(1, ceil(2/4)) = 1 for all


def token_choice_moe(top_k, capacity_factor):
    """E = d_model = 4 and an identity gate, so x is the router logits."""
    config = get_config("gpt-moe-tc", "tiny", d_model=4, n_heads=1, router_top_k=top_k, capacity_factor=capacity_factor)
    torch.manual_seed(0)
    moe = MoE(config, causal=False).eval()
    for p in moe.experts.parameters():
        torch.nn.init.normal_(p, std=0.5)
    with torch.no_grad():
        moe.gate.weight.copy_(torch.eye(4))
    return moe


def test_token_choice_top2_capacity_and_drops():
    moe = token_choice_moe(top_k=2, capacity_factor=1.0)  # C = ceil(4 tokens * 2 * 1.0 / 4) = 2
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.1],   # choices (0, 1)
                          [0.6, 0.1, 0.2, 0.1],   # (0, 2)
                          [0.3, 0.4, 0.2, 0.1],   # (1, 0)
                          [0.5, 0.25, 0.15, 0.1]])  # (0, 1)
    x = probs.log().unsqueeze(0)  # (1, 4, 4)
    with torch.no_grad():
        y, routing = moe(x)
    # Expert 0: first choices of tokens 0, 1, 3 -> slots 0, 1 kept, token 3 dropped; token 2's
    # second choice comes after all first choices (slot 3) -> dropped. Expert 1: token 2 (first
    # choice, slot 0), then second choices token 0 (slot 1, kept) and token 3 (slot 2, dropped).
    expected = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(routing[0], expected, rtol=0, atol=0)
    with torch.no_grad():
        for t in range(4):
            chosen = torch.topk(probs[t], 2).indices
            want = sum(probs[t, e] / probs[t, chosen].sum() * expert_reference(moe, int(e), x[0, t:t + 1])[0]
                       for e in range(4) if expected[t, e])
            torch.testing.assert_close(y[0, t], want if torch.is_tensor(want) else torch.zeros(4), atol=1e-5, rtol=1e-5)
    # Switch aux loss, by hand: f = first-choice shares (3/4, 1/4, 0, 0), P = mean probs.
    f = torch.tensor([0.75, 0.25, 0.0, 0.0])
    P = probs.mean(0)
    torch.testing.assert_close(moe.aux_loss, 4 * (f * P).sum(), atol=1e-6, rtol=1e-5)


def test_token_choice_top1_switch():
    moe = token_choice_moe(top_k=1, capacity_factor=1.0)  # C = ceil(4 * 1 * 1.0 / 4) = 1
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7], [0.1, 0.5, 0.2, 0.2]])
    x = probs.log().unsqueeze(0)
    with torch.no_grad():
        y, routing = moe(x)
    expected = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0]])  # token 1 overflows expert 0
    torch.testing.assert_close(routing[0], expected, rtol=0, atol=0)
    assert (y[0, 1] == 0).all()  # dropped: FFN output 0, the residual carries the token
    with torch.no_grad():
        want = 0.7 * expert_reference(moe, 3, x[0, 2:3])[0]  # raw probability as gate (Switch)
    torch.testing.assert_close(y[0, 2], want, atol=1e-5, rtol=1e-5)
    f = torch.tensor([0.5, 0.25, 0.0, 0.25])
    torch.testing.assert_close(moe.aux_loss, 4 * (f * probs.mean(0)).sum(), atol=1e-6, rtol=1e-5)


def test_routing_stats_by_hand():
    mask = np.zeros((1, 4, 3), dtype=np.int64)
    mask[0, 0] = [1, 1, 0]
    mask[0, 1] = [1, 0, 0]
    mask[0, 3] = [1, 1, 1]
    stats = routing_stats([mask, torch.from_numpy(mask)])
    layer = stats.layers[0]
    np.testing.assert_array_equal(layer.tokens_per_expert, [3, 2, 1])
    np.testing.assert_array_equal(layer.experts_per_token, [1, 1, 1, 1])
    assert layer.unprocessed_fraction == 0.25 and layer.n_tokens == 4
    masked = routing_stats([mask], token_mask=np.array([[1, 1, 0, 1]])).layers[0]
    assert masked.unprocessed_fraction == 0.0 and masked.n_tokens == 3
    text = stats.format()
    assert "routing.1" in text and "25.0% unprocessed" in text
