"""Pretraining objectives of the source material: causal LM (GPT), masked LM with the 80/10/10
rule and next-sentence pairs (BERT), and the teacher-forced seq2seq loss (Transformer).

Losses are means over the target positions that count; ``IGNORE`` marks positions that do not.
Masking draws from an explicit ``torch.Generator``, so a seed fixes which tokens are masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from forgeline.runtime.errors import ConfigError

IGNORE = -100  # label of a position that has no loss (PyTorch's cross_entropy default)


def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, pad_id: int | None = None) -> torch.Tensor:
    """-mean_t log P(x_t | x_<t): logits (B, T, V) at position t predict input_ids[:, t + 1].

    Targets equal to ``pad_id`` are left out.
    """
    pred = logits[:, :-1]  # (B, T-1, V) position t predicts t+1
    target = input_ids[:, 1:]  # (B, T-1)
    if pad_id is not None:
        target = target.masked_fill(target == pad_id, IGNORE)
    return F.cross_entropy(pred.reshape(-1, pred.size(-1)).float(), target.reshape(-1), ignore_index=IGNORE)


def teacher_forcing_inputs(target_ids: torch.Tensor, bos_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: [bos] + target[:-1], so step t sees the true y_<t."""
    bos = torch.full_like(target_ids[:, :1], bos_id)  # (B, 1)
    return torch.cat([bos, target_ids[:, :-1]], dim=1)  # (B, T)


def seq2seq_loss(logits: torch.Tensor, target_ids: torch.Tensor, pad_id: int | None = None) -> torch.Tensor:
    """-mean_t log P(y_t | y_<t, x): logits (B, T, V) from decoding teacher_forcing_inputs(target)."""
    target = target_ids if pad_id is None else target_ids.masked_fill(target_ids == pad_id, IGNORE)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1), ignore_index=IGNORE)


def mlm_loss(mlm_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy over masked positions only: mlm_logits (B, T, V), labels (B, T) with IGNORE elsewhere."""
    return F.cross_entropy(mlm_logits.reshape(-1, mlm_logits.size(-1)).float(), labels.reshape(-1),
                           ignore_index=IGNORE)


def nsp_loss(nsp_logits: torch.Tensor, is_random: torch.Tensor) -> torch.Tensor:
    """nsp_logits (B, 2), is_random (B,): 0 = B follows A (IsNext), 1 = B is random (NotNext), as HF."""
    return F.cross_entropy(nsp_logits.float(), is_random)


# ------------------------------------------------------------------------------------------- masking


@dataclass(frozen=True, kw_only=True)
class MaskingOptions:
    select_prob: float = 0.15  # share of eligible tokens that get a prediction target (BERT)
    mask_prob: float = 0.8  # of those: replaced by [MASK]
    random_prob: float = 0.1  # of those: replaced by a random ordinary token; the rest stay as they are

    def __post_init__(self):
        if not 0.0 < self.select_prob <= 1.0:
            raise ConfigError(f"select_prob={self.select_prob} must be in (0, 1].")
        if self.mask_prob < 0 or self.random_prob < 0 or self.mask_prob + self.random_prob > 1.0:
            raise ConfigError(f"mask_prob={self.mask_prob} and random_prob={self.random_prob} must be >= 0 "
                              "and sum to at most 1.")


def mask_tokens(input_ids: torch.Tensor, *, mask_id: int, vocab_size: int, special_ids: Sequence[int],
                generator: torch.Generator, options: MaskingOptions = MaskingOptions()):
    """BERT masking. Returns (masked_ids, labels), both (B, T); labels = the original id where a
    token was selected, IGNORE elsewhere. Special ids (pad, [CLS], [SEP], ...) are never selected,
    and a random replacement is always an ordinary (non-special) id."""
    special = torch.zeros(vocab_size, dtype=torch.bool)
    special[torch.as_tensor(list(special_ids), dtype=torch.long)] = True
    eligible = ~special[input_ids]  # (B, T)
    u_select = torch.rand(input_ids.shape, generator=generator)  # (B, T)
    u_action = torch.rand(input_ids.shape, generator=generator)  # (B, T) which of the 80/10/10
    selected = eligible & (u_select < options.select_prob)
    to_mask = selected & (u_action < options.mask_prob)
    to_random = selected & (u_action >= options.mask_prob) & (u_action < options.mask_prob + options.random_prob)
    ordinary = (~special).nonzero().squeeze(1)  # (V_ordinary,)
    random_ids = ordinary[torch.randint(len(ordinary), input_ids.shape, generator=generator)]  # (B, T)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))
    return masked, labels


# --------------------------------------------------------------------------------------------- NSP


@dataclass
class SentencePairs:
    input_ids: torch.Tensor  # (B, T) [CLS] A [SEP] B [SEP] [PAD]...
    token_type_ids: torch.Tensor  # (B, T) 0 for [CLS] A [SEP], 1 for B [SEP], 0 on padding
    attention_mask: torch.Tensor  # (B, T) 1 = real token
    is_random: torch.Tensor  # (B,) 0 = B is the segment after A, 1 = B is a random segment


def nsp_pairs(segments: Sequence[Sequence[int]], starts: Sequence[int], *, seq_len: int, specials: dict[str, int],
              generator: torch.Generator, random_prob: float = 0.5) -> SentencePairs:
    """One pair per index i in ``starts``: A = segments[i]; B = segments[i + 1] with probability
    1 - random_prob, else a random segment other than i and i + 1. Each segment is cut so the
    pair fits ``seq_len``; ``specials`` holds the ids of cls, sep and pad."""
    n = len(segments)
    if n < 3:
        raise ConfigError(f"NSP needs at least 3 segments to draw random partners from; got {n}.")
    budget = seq_len - 3  # [CLS], [SEP], [SEP]
    rows, types, labels = [], [], []
    for i in starts:
        if not 0 <= i < n - 1:
            raise ConfigError(f"NSP start {i} has no following segment (there are {n} segments).")
        is_random = bool(torch.rand((), generator=generator) < random_prob)
        j = i + 1
        while is_random and j in (i, i + 1):
            j = int(torch.randint(n, (), generator=generator))
        a, b = _id_list(segments[i])[: budget // 2], _id_list(segments[j])[: budget - budget // 2]
        rows.append([specials["cls"], *a, specials["sep"], *b, specials["sep"]])
        types.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
        labels.append(int(is_random))
    return _pad_pairs(rows, types, labels, seq_len, specials["pad"])


def _id_list(segment) -> list[int]:
    return segment.tolist() if isinstance(segment, torch.Tensor) else [int(x) for x in segment]


def _pad_pairs(rows: list[list[int]], types: list[list[int]], labels: list[int], seq_len: int, pad_id: int):
    B = len(rows)
    ids = torch.full((B, seq_len), pad_id, dtype=torch.long)
    token_type = torch.zeros((B, seq_len), dtype=torch.long)
    attention = torch.zeros((B, seq_len), dtype=torch.long)
    for r, (row, tt) in enumerate(zip(rows, types)):
        ids[r, : len(row)] = torch.tensor(row)
        token_type[r, : len(tt)] = torch.tensor(tt)
        attention[r, : len(row)] = 1
    return SentencePairs(ids, token_type, attention, torch.tensor(labels, dtype=torch.long))
