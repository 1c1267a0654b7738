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


def _preallocated(present, columns):
    """Per-layer caches (B, nh, columns, hs) holding the prefill's present (L, 2, B, nh, T, hs), the
    rest zero: the decode step's inputs, as runtime/tasks/kv_cache.py keeps them."""
    L, _, B, nh, T, hs = present.shape
    caches = [torch.zeros(B, nh, columns, hs) for _ in range(2 * L)]
    for i in range(L):
        for j in range(2):
            caches[2 * i + j][:, :, :T] = present[i, j]
    return caches


@pytest.mark.parametrize("name", ["gpt", "gpt-moe", "gpt-moe-tc", "gpt-moe-switch"])
def test_gpt_cache_matches_recompute(name):
    """Decode steps over a preallocated cache with unwritten room, each writing one column."""
    model = build_model(get_config(name, "tiny", init_std=0.3), seed=1)
    ids, mask = _padded(torch.Generator().manual_seed(0), [12, 5, 9], 12)
    with torch.no_grad():
        full = model.prefill(ids, mask)[0]  # (B, T, V) one pass over everything
        logits, present = model.prefill(ids[:, :8], mask[:, :8])  # covers all padding: decoded tokens are real
        caches, past_mask = _preallocated(present, 15), torch.zeros(3, 15, dtype=torch.long)
        past_mask[:, :8] = mask[:, :8]
        for t in range(8, 12):
            logits, new_kv = model.decode_step(ids[:, t:t + 1], past_mask, *caches)
            torch.testing.assert_close(logits[:, 0], full[:, t], atol=1e-5, rtol=1e-4)
            assert new_kv.shape == (2, 2, 3, 2, 1, 16)  # (L, 2, B, nh, 1, hs): the new column only
            for c, new in zip(caches, new_kv.flatten(0, 1)):
                c[:, :, t] = new[:, :, 0]
            past_mask[:, t] = 1


def test_unwritten_cache_room_changes_nothing():
    """Masked columns beyond what the cache holds are never attended to, whatever they contain."""
    model = build_model(get_config("gpt", "tiny", init_std=0.3), seed=1)
    ids = torch.randint(0, 264, (2, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _, present = model.prefill(ids[:, :5], torch.ones_like(ids[:, :5]))
        exact = model.decode_step(ids[:, 5:], torch.ones_like(ids[:, :5]), *_preallocated(present, 5))
        caches, past_mask = _preallocated(present, 9), torch.zeros(2, 9, dtype=torch.long)
        past_mask[:, :5] = 1
        for c in caches:
            c[:, :, 5:] = 1e3  # garbage in the room
        roomy = model.decode_step(ids[:, 5:], past_mask, *caches)
        full = model(ids)[0][:, 5]  # plain forward: the independent reference
    torch.testing.assert_close(roomy[0], exact[0], atol=1e-5, rtol=1e-4)  # BLAS may sum C=9 in another order
    torch.testing.assert_close(roomy[0][:, 0], full, atol=1e-5, rtol=1e-4)


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
