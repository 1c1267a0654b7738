"""Prompts in, text out: ids or text normalised to id rows, left padding, the position budget."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import ConfigError, InputError
from ..format import Manifest
from ..tokenizer import encode_checked


def left_pad(rows: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of unequal length -> ids (B, T) int64, left-padded with pad_id, and mask (B, T) (1 = real)."""
    T = max(len(r) for r in rows)
    ids = np.full((len(rows), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), T), dtype=np.int64)
    for b, row in enumerate(rows):
        ids[b, T - len(row):] = row
        mask[b, T - len(row):] = 1
    return ids, mask


def prompt_ids(model, prompt) -> list[list[int]]:
    """Normalise a prompt argument (ids, a batch of ids, text, or texts) to a batch of id lists."""
    vocab = int(model.manifest.config["vocab_size"])
    if isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], str)):
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        rows = [encode_checked(model.tokenizer, t, vocab) for t in texts]
    else:
        arr_rows = [prompt] if _is_id_list(prompt) else list(prompt)
        rows = [[_as_id(i, vocab) for i in row] for row in arr_rows]
    if not rows or any(len(r) == 0 for r in rows):
        raise InputError("a prompt is empty; give at least one token (or one character of text).")
    return rows


def _is_id_list(prompt) -> bool:
    return all(not isinstance(x, (list, tuple, np.ndarray)) for x in prompt)


def _as_id(value, vocab: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InputError(f"prompt token {value!r} is not an integer id; pass ints or text.")
    if not 0 <= int(value) < vocab:
        raise InputError(f"prompt token id {int(value)} is outside the vocabulary [0, {vocab}); pass valid ids.")
    return int(value)


def check_budget(manifest: Manifest, lengths: list[int], max_new_tokens: int) -> None:
    limit = int(manifest.config["max_positions"])
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be 0 or more.")
    if max(lengths) > limit:
        raise InputError(f"a prompt has {max(lengths)} tokens but the model takes at most {limit} positions; shorten it.")
    if max(lengths) + max_new_tokens > limit:
        raise InputError(
            f"{max(lengths)} prompt tokens + {max_new_tokens} new tokens exceed the model's {limit} positions; "
            f"ask for at most {limit - max(lengths)} new tokens or shorten the prompt."
        )




def decode_texts(model, rows: list[list[int]]) -> list[str] | None:
    if not model.manifest.tokenizer:
        return None
    return [model.tokenizer.decode(row) for row in rows]
