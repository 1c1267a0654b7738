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
    prompt = _as_text(prompt)
    if isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], str)):
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        positions = int(model.manifest.config["max_positions"])
        rows = [encode_checked(model.tokenizer, t, vocab, positions) for t in texts]
    else:
        arr_rows = [prompt] if _is_id_list(prompt) else list(prompt)
        rows = [[_as_id(i, vocab) for i in row] for row in arr_rows]
    if not rows or any(len(r) == 0 for r in rows):
        raise InputError("a prompt is empty; give at least one token (or one character of text).")
    return rows


def _as_text(prompt):
    """bytes (or a list of them) decoded as UTF-8; str with lone surrogates (undecodable argv) refused."""
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, (bytes, str)) for p in prompt):
        return [_as_text(p) for p in prompt]
    if isinstance(prompt, (bytes, bytearray)):
        try:
            return bytes(prompt).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"the prompt is not valid UTF-8 text (byte {exc.start}: {exc.reason}); pass UTF-8 "
                             "text or token ids.") from exc
    if isinstance(prompt, str):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(f"the prompt is not valid UTF-8 text (character {exc.start}: {exc.reason}); pass "
                             "UTF-8 text or token ids.") from exc
    return prompt


def _is_id_list(prompt) -> bool:
    return all(not isinstance(x, (list, tuple, np.ndarray)) for x in prompt)


def _as_id(value, vocab: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InputError(f"prompt token {value!r} is not an integer id; pass ints or text.")
    if not 0 <= int(value) < vocab:
        raise InputError(f"prompt token id {int(value)} is outside the vocabulary [0, {vocab}); pass valid ids.")
    return int(value)


def check_new_tokens(max_new_tokens) -> int:
    """A positive int (0 would never stop the decode loop; 3.5, None or True mean nothing here)."""
    if isinstance(max_new_tokens, (bool, np.bool_)) or not isinstance(max_new_tokens, (int, np.integer)):
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be a positive integer, e.g. 32.")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be at least 1.")
    return int(max_new_tokens)


def check_prompt_lengths(manifest: Manifest, lengths: list[int]) -> int:
    """The position table's size, after checking that every prompt fits in it."""
    limit = int(manifest.config["max_positions"])
    if max(lengths) > limit:
        raise InputError(f"a prompt has {max(lengths)} tokens but the model takes at most {limit} positions; shorten it.")
    return limit


def check_budget(manifest: Manifest, lengths: list[int], max_new_tokens) -> None:
    """max_new_tokens is a positive int, and prompt + new tokens fit the position table."""
    max_new_tokens = check_new_tokens(max_new_tokens)
    limit = check_prompt_lengths(manifest, lengths)
    if max(lengths) + max_new_tokens > limit:
        raise InputError(
            f"{max(lengths)} prompt tokens + {max_new_tokens} new tokens exceed the model's {limit} positions; "
            f"ask for at most {limit - max(lengths)} new tokens or shorten the prompt."
        )


def decode_texts(model, rows: list[list[int]]) -> list[str] | None:
    if not model.manifest.tokenizer:
        return None
    return [model.tokenizer.decode(row) for row in rows]
