"""Objectives against independent computations: losses by hand, masking and NSP rates against
the stated probabilities with a binomial tolerance, and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from forgeline.train.objectives import (IGNORE, MaskingOptions, causal_lm_loss, mask_tokens, mlm_loss, nsp_loss,
                                         nsp_pairs, seq2seq_loss, teacher_forcing_inputs)
from forgeline.train.trainer import TrainOptions, lr_at

SIGMAS = 5.0  # tolerance of a rate test in binomial standard deviations


def log_softmax_by_hand(row: list[float]) -> list[float]:
    """log(exp(x_i) / sum_j exp(x_j)), written with math only."""
    top = max(row)
    log_z = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_z for x in row]


def assert_rate(count: int, n: int, p: float, what: str):
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(count - n * p) <= SIGMAS * sigma, f"{what}: {count}/{n} = {count / n:.4f}, expected {p:.4f} ± {SIGMAS * sigma / n:.4f}"


# ------------------------------------------------------------------------------------------- losses


def test_causal_lm_loss_equals_hand_computation_on_two_token_vocab():
    # Vocabulary {0, 1}; sequence 0 1 1. Position 0 predicts 1, position 1 predicts 1; position 2 predicts nothing.
    logits = [[2.0, -1.0], [0.5, 0.25], [3.0, 3.0]]
    ids = [0, 1, 1]
    expected = -(log_softmax_by_hand(logits[0])[1] + log_softmax_by_hand(logits[1])[1]) / 2
    # Closed form for position 0: -log(e^-1 / (e^2 + e^-1)) = log(1 + e^3).
    assert -log_softmax_by_hand(logits[0])[1] == pytest.approx(math.log(1 + math.exp(3)))
    loss = causal_lm_loss(torch.tensor([logits]), torch.tensor([ids]))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_causal_lm_loss_leaves_out_padding_targets():
    logits = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [5.0, 5.0, 5.0]]
    ids = [1, 0, 2]  # pad id 2: the last target does not count
    expected = -log_softmax_by_hand(logits[0])[0]
    loss = causal_lm_loss(torch.tensor([logits]), torch.tensor([ids]), pad_id=2)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_seq2seq_teacher_forcing_and_loss_by_hand():
    target = torch.tensor([[5, 6, 7]])
    assert teacher_forcing_inputs(target, bos_id=9).tolist() == [[9, 5, 6]]
    logits = [[0.1 * v for v in range(10)], [0.0] * 10, [float(v % 3) for v in range(10)]]
    target_ids = torch.tensor([[5, 6, 0]])  # 0 = pad: not counted
    expected = -(log_softmax_by_hand(logits[0])[5] + log_softmax_by_hand(logits[1])[6]) / 2
    loss = seq2seq_loss(torch.tensor([logits]), target_ids, pad_id=0)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert -log_softmax_by_hand(logits[1])[6] == pytest.approx(math.log(10))  # uniform row


def test_mlm_and_nsp_losses_by_hand():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 9.0], [-1.0, 0.0, 1.0]]])  # (1, 3, 3)
    labels = torch.tensor([[2, IGNORE, 0]])
    rows = logits[0].tolist()
    expected = -(log_softmax_by_hand(rows[0])[2] + log_softmax_by_hand(rows[2])[0]) / 2
    assert float(mlm_loss(logits, labels)) == pytest.approx(expected, rel=1e-6)
    nsp = torch.tensor([[0.3, -0.2], [1.0, 1.0]])
    expected_nsp = -(log_softmax_by_hand([0.3, -0.2])[1] + math.log(0.5)) / 2
    assert float(nsp_loss(nsp, torch.tensor([1, 0]))) == pytest.approx(expected_nsp, rel=1e-6)


# ------------------------------------------------------------------------------------------ masking

V, MASK, PAD, CLS, SEP = 20, 16, 17, 18, 19
SPECIALS = (MASK, PAD, CLS, SEP)


def _masking_input(generator: torch.Generator) -> torch.Tensor:
    ids = torch.randint(0, 16, (400, 250), generator=generator)  # ordinary ids 0..15
    ids[:, 0], ids[:, -1] = CLS, SEP
    ids[::3, 200:] = PAD  # a third of the rows are padded
    return ids


def test_masking_rates_match_15_80_10_10_within_binomial_tolerance():
    ids = _masking_input(torch.Generator().manual_seed(1))
    masked, labels = mask_tokens(ids, mask_id=MASK, vocab_size=V, special_ids=SPECIALS,
                                 generator=torch.Generator().manual_seed(2))
    eligible = int((ids < 16).sum())
    selected = labels != IGNORE
    n_sel = int(selected.sum())
    assert_rate(n_sel, eligible, 0.15, "selected share of ordinary tokens")
    became_mask = int((selected & (masked == MASK)).sum())
    changed = int((selected & (masked != MASK) & (masked != ids)).sum())
    kept = int((selected & (masked == ids)).sum())
    # A random replacement equals the original with probability 1/16 (16 ordinary ids): it then looks kept.
    assert_rate(became_mask, n_sel, 0.8, "[MASK] share of selected")
    assert_rate(changed, n_sel, 0.1 * 15 / 16, "random-token share of selected")
    assert_rate(kept, n_sel, 0.1 + 0.1 / 16, "unchanged share of selected")
    assert became_mask + changed + kept == n_sel


def test_masking_never_touches_specials_and_labels_hold_originals():
    ids = _masking_input(torch.Generator().manual_seed(3))
    masked, labels = mask_tokens(ids, mask_id=MASK, vocab_size=V, special_ids=SPECIALS,
                                 generator=torch.Generator().manual_seed(4))
    special = ids >= 16
    assert torch.equal(masked[special], ids[special])
    assert bool((labels[special] == IGNORE).all())
    selected = labels != IGNORE
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])  # unselected tokens never change
    random_replacements = selected & (masked != MASK)
    assert bool((masked[random_replacements] < 16).all()), "a random replacement was a special id"


def test_masking_is_seeded():
    ids = _masking_input(torch.Generator().manual_seed(5))
    kw = dict(mask_id=MASK, vocab_size=V, special_ids=SPECIALS)
    a = mask_tokens(ids, generator=torch.Generator().manual_seed(7), **kw)
    b = mask_tokens(ids, generator=torch.Generator().manual_seed(7), **kw)
    c = mask_tokens(ids, generator=torch.Generator().manual_seed(8), **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_masking_options_other_rates():
    ids = _masking_input(torch.Generator().manual_seed(6))
    options = MaskingOptions(select_prob=0.4, mask_prob=0.5, random_prob=0.0)
    masked, labels = mask_tokens(ids, mask_id=MASK, vocab_size=V, special_ids=SPECIALS,
                                 generator=torch.Generator().manual_seed(9), options=options)
    n_sel = int((labels != IGNORE).sum())
    assert_rate(n_sel, int((ids < 16).sum()), 0.4, "selected share")
    assert_rate(int(((labels != IGNORE) & (masked == MASK)).sum()), n_sel, 0.5, "[MASK] share")


# ---------------------------------------------------------------------------------------------- NSP


def test_nsp_pairs_are_half_random_and_well_formed():
    segments = [[10 * s + j for j in range(6)] for s in range(50)]  # segment s holds ids 10s..10s+5
    starts = [i % 49 for i in range(3000)]
    specials = {"cls": 1001, "sep": 1002, "pad": 1000}
    pairs = nsp_pairs(segments, starts, seq_len=12, specials=specials, generator=torch.Generator().manual_seed(0))
    assert_rate(int(pairs.is_random.sum()), len(starts), 0.5, "random-B share")
    budget = 12 - 3
    for r, i in enumerate(starts[:400]):
        row = pairs.input_ids[r].tolist()
        a, b = segments[i][: budget // 2], row[2 + budget // 2: 2 + budget // 2 + budget - budget // 2]
        assert row[: 2 + len(a)] == [1001, *a, 1002]
        b_segment = b[0] // 10
        if pairs.is_random[r]:
            assert b_segment not in (i, i + 1)
        else:
            assert b_segment == i + 1
        assert b == segments[b_segment][: len(b)]
        assert row[2 + len(a) + len(b)] == 1002
        assert pairs.token_type_ids[r].tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1) + [0] * (12 - 3 - len(a) - len(b))
        assert pairs.attention_mask[r].sum() == 3 + len(a) + len(b)


# ----------------------------------------------------------------------------------------- schedule


def test_lr_schedule_warmup_then_cosine_to_floor():
    o = TrainOptions(steps=110, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, o) == pytest.approx(1e-4)
    assert lr_at(9, o) == pytest.approx(1e-3)
    assert lr_at(10, o) == pytest.approx(1e-3)
    assert lr_at(60, o) == pytest.approx(1e-4 + 0.5 * 9e-4)  # halfway through the cosine
    assert lr_at(110, o) == pytest.approx(1e-4)
