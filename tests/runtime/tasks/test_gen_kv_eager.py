"""Eager KV-cache paths (define/) against full recompute, for every decoder kind, and padding."""

from __future__ import annotations

import pytest
import torch

from forgeline.define import build_model, get_config


def _padded(gen, lengths, T, V=264):
    ids = torch.randint(0, V, (len(lengths), T), generator=gen)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, T - n:] = 1
    return ids, mask


@pytest.mark.parametrize("name", ["gpt", "gpt-moe", "gpt-moe-tc", "gpt-moe-switch"])
def test_gpt_cache_matches_recompute(name):
    model = build_model(get_config(name, "tiny", init_std=0.3), seed=1)
    ids, mask = _padded(torch.Generator().manual_seed(0), [12, 5, 9], 12)
    with torch.no_grad():
        full = model.prefill(ids, mask)[0]  # (B, T, V) one pass over everything
        logits, cache = model.prefill(ids[:, :8], mask[:, :8])  # covers all padding: decoded tokens are real
        for t in range(8, 12):
            logits, cache = model.decode_step(ids[:, t:t + 1], mask[:, :t], cache)
            torch.testing.assert_close(logits[:, 0], full[:, t], atol=1e-5, rtol=1e-4)
    assert cache.shape == (2, 2, 3, 2, 12, 16)


@pytest.mark.parametrize("name", ["gpt", "gpt-moe", "gpt-moe-tc"])
def test_padding_never_matters(name):
    """Changing the ids under padding changes no real token's logits (MoE: pads are never routed)."""
    model = build_model(get_config(name, "tiny", init_std=0.3), seed=1)
    ids, mask = _padded(torch.Generator().manual_seed(1), [10, 3, 6], 10)
    other = torch.where(mask.bool(), ids, (ids + 77) % 264)
    with torch.no_grad():
        a, b = model.prefill(ids, mask)[0], model.prefill(other, mask)[0]
    real = mask.bool()
    assert torch.equal(a[real], b[real])


def test_unpadded_prefill_is_forward():
    model = build_model(get_config("gpt-moe", "tiny", init_std=0.3), seed=1)
    ids = torch.randint(0, 264, (3, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model.prefill(ids, torch.ones_like(ids))[0], model(ids)[0], atol=0, rtol=0)


@pytest.mark.parametrize("name", ["transformer", "transformer-moe"])
def test_transformer_cache_matches_recompute(name):
    model = build_model(get_config(name, "tiny", init_std=0.3), seed=1)
    gen = torch.Generator().manual_seed(3)
    src, tgt = torch.randint(0, 264, (2, 7), generator=gen), torch.randint(0, 264, (2, 10), generator=gen)
    with torch.no_grad():
        full = model(src, tgt)[0]  # (B, T, V)
        memory = model.encode(src)
        logits, cache = model.decoder_prefill(tgt[:, :3], memory)
        torch.testing.assert_close(logits, full[:, :3], atol=1e-5, rtol=1e-4)
        for t in range(3, 10):
            logits, cache = model.decoder_step(tgt[:, t:t + 1], memory, cache)
            torch.testing.assert_close(logits[:, 0], full[:, t], atol=1e-5, rtol=1e-4)
