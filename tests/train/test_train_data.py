"""Corpus splits and per-objective batches, checked against the raw bytes of the shipped corpus."""

from __future__ import annotations

import pytest
import torch

from forgeline.train.data import clm_batch, default_corpus_path, load_corpus, mlm_batch, seq2seq_batch, step_generator
from forgeline.train.objectives import IGNORE
from forgeline.runtime.tokenizer import BYTE_SPECIALS


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


def _contains(haystack: bytes, row: torch.Tensor) -> bool:
    return bytes(row.tolist()) in haystack


def test_shipped_corpus_splits_by_position():
    raw = default_corpus_path().read_bytes()
    assert 500_000 < len(raw) < 3_000_000
    corpus = load_corpus(val_fraction=0.05)
    assert bytes(corpus.train.tolist()) + bytes(corpus.val.tolist()) == raw
    assert len(corpus.val) == len(raw) - int(len(raw) * 0.95)


def test_batches_depend_on_seed_and_step_only(corpus):
    a = clm_batch(corpus.train, batch_size=4, seq_len=16, generator=step_generator(3, 10))["input_ids"]
    b = clm_batch(corpus.train, batch_size=4, seq_len=16, generator=step_generator(3, 10))["input_ids"]
    c = clm_batch(corpus.train, batch_size=4, seq_len=16, generator=step_generator(3, 11))["input_ids"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    train_bytes = bytes(corpus.train.tolist())
    assert all(_contains(train_bytes, row) for row in a)


def test_seq2seq_batch_target_follows_source(corpus):
    batch = seq2seq_batch(corpus.val, batch_size=3, seq_len=8, generator=step_generator(0, 0))
    val_bytes = bytes(corpus.val.tolist())
    for src, tgt_in, target in zip(batch["src_ids"], batch["tgt_ids"], batch["target"]):
        assert _contains(val_bytes, torch.cat([src, target]))
        assert tgt_in.tolist() == [BYTE_SPECIALS["bos"], *target[:-1].tolist()]


def test_mlm_batch_with_nsp_layout(corpus):
    batch = mlm_batch(corpus.train, batch_size=64, seq_len=32, generator=step_generator(0, 0), nsp=True)
    ids, labels = batch["input_ids"], batch["labels"]
    original = torch.where(labels != IGNORE, labels, ids)  # undo the masking
    assert bool((original[:, 0] == BYTE_SPECIALS["cls"]).all())
    assert bool((original == BYTE_SPECIALS["sep"]).sum(1).eq(2).all())
    assert bool((labels[original >= 256] == IGNORE).all())  # specials are never prediction targets
    assert 10 < int(batch["is_random"].sum()) < 54  # half random, loosely (binomial 64 x 0.5: ±5.5σ)
    half = (32 - 3) // 2  # A and B are corpus segments of this length
    assert bool((batch["attention_mask"].sum(1) == 3 + 2 * half).all())
