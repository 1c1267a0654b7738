"""Sparse MoE dispatch against plain per-expert loops written from the papers' equations.

Expert choice (Zhou et al. 2022): S = softmax(X W_g) per group; expert e takes the k tokens with
the largest S[:, e] (ties to the lower index), k = ceil(n c / E); its outputs are added back
weighted by S. Token choice (Switch / GShard): each token ranks the experts; an expert accepts
tokens in priority order (all first choices by position, then second choices) up to its capacity
C = ceil(n top_k c / E); top-1 gates with the raw probability, top-2 with the renormalised pair.
The references never use the layer's routing code, only its weights.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from forgeline.define import get_config
from forgeline.define.moe import MoE, _slot_positions, _slot_ratio

ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"), "relu": F.relu}


def make_layer(name, n_experts, capacity_factor, causal=False, seed=0, **overrides):
    config = get_config(name, "tiny", n_experts=n_experts, capacity_factor=capacity_factor, **overrides)
    torch.manual_seed(seed)
    layer = MoE(config, causal=causal).eval()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return layer, config


def ffn(layer, config, e, x):
    """Expert e on tokens x (m, D), written from the stacked weights: act(x W1 + b1) W2 + b2."""
    ex = layer.experts
    return ACTIVATIONS[config.activation](x @ ex.w1[e] + ex.b1[e, 0]) @ ex.w2[e] + ex.b2[e, 0]


def top_indices(values, k):
    """Indices of the k largest values, ties to the lower index (a stable descending sort)."""
    return torch.sort(values, descending=True, stable=True).indices[:k]


def groups_of(x, mask, causal):
    return (x.transpose(0, 1), mask.transpose(0, 1)) if causal else (x, mask)


def expert_choice_loop(layer, config, x, mask, causal):
    """Returns y (B, T, D) and chosen[g][e] = set of token positions expert e took in group g."""
    xg, mg = groups_of(x, mask, causal)
    y, chosen = torch.zeros_like(xg), []
    for g in range(xg.shape[0]):
        real = torch.nonzero(mg[g]).flatten()
        S = F.softmax(xg[g] @ layer.gate.weight.T, dim=-1)  # (n, E)
        k = min(len(real), math.ceil(len(real) * config.capacity_factor / config.n_experts - 1e-9))
        chosen.append([])
        for e in range(config.n_experts):
            tokens = real[top_indices(S[real, e], k)]
            chosen[g].append(set(tokens.tolist()))
            y[g] = y[g].index_add(0, tokens, S[tokens, e, None] * ffn(layer, config, e, xg[g, tokens]))
    return (y.transpose(0, 1) if causal else y), chosen


def token_choice_loop(layer, config, x, mask):
    """Encoder grouping (a group is a sequence); returns y and kept[g][e] = set of positions."""
    E, top_k = config.n_experts, config.router_top_k
    y, kept = torch.zeros_like(x), []
    for g in range(x.shape[0]):
        real = torch.nonzero(mask[g]).flatten().tolist()
        S = F.softmax(x[g] @ layer.gate.weight.T, dim=-1)  # (n, E)
        choices = {t: top_indices(S[t], top_k).tolist() for t in real}
        capacity = math.ceil(len(real) * top_k * config.capacity_factor / E - 1e-9)
        load, kept_g = [0] * E, [set() for _ in range(E)]
        for level in range(top_k):
            for t in real:
                e = choices[t][level]
                if load[e] < capacity:
                    kept_g[e].add(t)
                load[e] += 1  # a dropped choice still counts against later ones (GShard)
        for t in real:
            picks = choices[t]
            norm = S[t, picks].sum() if top_k > 1 else 1.0
            for e in picks:
                if t in kept_g[e]:
                    y[g, t] = y[g, t] + S[t, e] / norm * ffn(layer, config, e, x[g, t:t + 1])[0]
        kept.append(kept_g)
    return y, kept


def chosen_sets(routing, causal):
    """routing (B, T, E) -> [g][e] set of positions, groups as in the layer."""
    r = routing.transpose(0, 1) if causal else routing
    return [[set(torch.nonzero(r[g, :, e]).flatten().tolist()) for e in range(r.shape[2])] for g in range(r.shape[0])]


def expert_rows(layer):
    """Record the row count of every batched expert call: proof that experts see only their tokens."""
    rows = []
    layer.experts.register_forward_hook(lambda mod, args, out: rows.append(tuple(args[0].shape)))
    return rows


@pytest.mark.parametrize("n_experts,capacity_factor", [(2, 1.0), (4, 2.0), (8, 1.25), (32, 2.0), (4, 0.5)])
@pytest.mark.parametrize("batch,seq", [(1, 1), (2, 5), (3, 16), (1, 37)])
def test_expert_choice_matches_loop(n_experts, capacity_factor, batch, seq):
    layer, config = make_layer("bert-moe", n_experts, capacity_factor)
    x = torch.randn(batch, seq, config.d_model, generator=torch.Generator().manual_seed(seq * 7 + batch))
    mask = torch.ones(batch, seq)
    if batch > 1 and seq > 2:
        mask[1, seq // 2:] = 0  # a padded sequence: its own, smaller k
    rows = expert_rows(layer)
    with torch.no_grad():
        y, routing = layer(x, mask)
        y_ref, chosen = expert_choice_loop(layer, config, x, mask, causal=False)
    assert chosen_sets(routing, causal=False) == chosen
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    slots = min(seq, math.ceil(seq * capacity_factor / n_experts - 1e-9))  # from the padded length
    assert rows == [(n_experts, batch * slots, config.d_model)]


@pytest.mark.parametrize("n_experts,capacity_factor", [(4, 2.0), (8, 1.0), (16, 2.0)])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_expert_choice_causal_groups_match_loop(n_experts, capacity_factor, batch):
    layer, config = make_layer("gpt-moe", n_experts, capacity_factor, causal=True)
    seq = 6
    x = torch.randn(batch, seq, config.d_model, generator=torch.Generator().manual_seed(batch))
    rows = expert_rows(layer)
    with torch.no_grad():
        y, routing = layer(x)
        y_ref, chosen = expert_choice_loop(layer, config, x, torch.ones(batch, seq), causal=True)
    assert chosen_sets(routing, causal=True) == chosen
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    k = min(batch, math.ceil(batch * capacity_factor / n_experts))  # a group is one position
    assert rows == [(n_experts, seq * k, config.d_model)]


def test_expert_choice_ties_go_to_the_lower_index():
    layer, config = make_layer("bert-moe", 4, 1.0)
    x = torch.randn(2, 8, config.d_model)
    with torch.no_grad():
        layer.gate.weight.zero_()  # every score is 1/E: every token ties with every other
        y, routing = layer(x)
        y_ref, chosen = expert_choice_loop(layer, config, x, torch.ones(2, 8), False)
    assert chosen_sets(routing, causal=False) == chosen == [[{0, 1}] * 4] * 2  # k = 2, lowest indices
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("top_k,capacity_factor", [(1, 1.0), (1, 1.25), (2, 1.0), (2, 2.0), (2, 0.5)])
@pytest.mark.parametrize("batch,seq", [(1, 4), (2, 13), (3, 32)])
def test_token_choice_matches_loop(top_k, capacity_factor, batch, seq):
    layer, config = make_layer("gpt-moe-tc", 4, capacity_factor, router_top_k=top_k)
    x = torch.randn(batch, seq, config.d_model, generator=torch.Generator().manual_seed(seq + top_k))
    mask = torch.ones(batch, seq)
    if batch > 1:
        mask[1, seq - 3:] = 0
    rows = expert_rows(layer)
    with torch.no_grad():
        y, routing = layer(x, mask)
        y_ref, kept = token_choice_loop(layer, config, x, mask)
    assert chosen_sets(routing, causal=False) == kept
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    capacity = min(seq, math.ceil(seq * top_k * capacity_factor / 4 - 1e-9))
    assert rows == [(4, batch * capacity, config.d_model)]


@pytest.mark.parametrize("name", ["bert-moe", "gpt-moe-tc"])
def test_gradients_match_loop(name):
    layer, config = make_layer(name, 4, 1.5)
    x = torch.randn(2, 9, config.d_model, generator=torch.Generator().manual_seed(3), requires_grad=True)
    mask = torch.ones(2, 9)
    mask[0, 7:] = 0
    loop = expert_choice_loop(layer, config, x, mask, False)[0] if name == "bert-moe" else \
        token_choice_loop(layer, config, x, mask)[0]
    probe = torch.randn_like(loop)
    params = [x, layer.gate.weight, *layer.experts.parameters()]
    want = torch.autograd.grad((loop * probe).sum(), params)
    got = torch.autograd.grad((layer(x, mask)[0] * probe).sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("value", [2.0 / 4, 2.0 / 32, 1.25 / 4, 2 * 1.25 / 8, 1.2 / 4, 3.0, 1.1 / 3, 0.1 / 7])
def test_slot_list_length_follows_the_group_size(value):
    ratio = _slot_ratio(value)
    assert ratio >= value * (1 - 1e-6)
    for n in range(1, 70):
        slots = _slot_positions(torch.zeros(n), ratio)
        assert slots.tolist() == list(range(len(slots)))
        assert len(slots) == min(n, math.ceil(n * ratio))
        assert len(slots) >= min(n, math.ceil(n * value * (1 - 1e-6)))  # never fewer than the router's k
