"""BERT tasks on a loaded artifact: fill-mask, next-sentence, and mean-pooled sentence embeddings.

numpy only (plus the artifact's tokenizer for text). Inputs are built as BERT was trained:
``[CLS] a [SEP]`` (segment 0) then ``b [SEP]`` (segment 1), from the tokenizer's special ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, InputError

MASK_MARKER = "[MASK]"  # where a text leaves a word out; works with any tokenizer, bytes included

TextOrIds = str | Sequence[int]


@dataclass(frozen=True)
class Candidate:
    token_id: int
    probability: float  # softmax of mlm_logits over the whole vocabulary
    token: str | None  # decoded text when the artifact has a tokenizer


@dataclass(frozen=True)
class MaskPrediction:
    position: int  # index of the [MASK] in the model input ([CLS] is 0)
    candidates: list[Candidate]  # most probable first


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 so that small probabilities keep their digits."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def fill_mask(model, text_or_ids: TextOrIds, top_k: int = 5, mask_id: int | None = None) -> list[MaskPrediction]:
    """For each masked position, the ``top_k`` most probable tokens.

    Text: ``[MASK]`` marks each gap, and [CLS] ... [SEP] is added. Ids are the model input as given,
    and a mask id comes from the tokenizer or ``mask_id``.
    """
    _require_bert(model, "fill-mask")
    if top_k < 1:
        raise InputError(f"top_k={top_k} must be at least 1.")
    tokenizer = _tokenizer(model, required=isinstance(text_or_ids, str) or mask_id is None)
    if isinstance(text_or_ids, str):
        ids = _encode_masked(model, tokenizer, text_or_ids)
    else:
        ids = _as_ids(text_or_ids, "text_or_ids")
    mask = mask_id if mask_id is not None else _special(tokenizer, "mask")
    positions = [i for i, t in enumerate(ids) if t == mask]
    if not positions:
        raise InputError(f"the input has no mask token (id {mask}); put {MASK_MARKER} where a word is missing.")
    logits = model.run(**_declared(model, _single(ids, [0] * len(ids))))["mlm_logits"][0]  # (T, V)
    probs = softmax(logits[positions])  # (M, V)
    k = min(top_k, probs.shape[-1])
    return [MaskPrediction(pos, _candidates(row, k, tokenizer)) for pos, row in zip(positions, probs)]


def next_sentence(model, a: TextOrIds, b: TextOrIds) -> float:
    """P(b follows a): softmax of nsp_logits, index 0 = IsNext (as in BERT and Hugging Face)."""
    _require_bert(model, "next-sentence")
    if "nsp_logits" not in [spec.name for spec in model.manifest.outputs]:
        raise ConfigError(f"{model.path} holds a model without a next-sentence head (RoBERTa, DistilBERT).")
    tokenizer = _tokenizer(model)
    cls, sep = _special(tokenizer, "cls"), _special(tokenizer, "sep")
    first, second = _encode(model, tokenizer, a, "a"), _encode(model, tokenizer, b, "b")
    ids = [cls, *first, sep, *second, sep]
    types = [0] * (len(first) + 2) + [1] * (len(second) + 1)
    logits = model.run(**_single(ids, types))["nsp_logits"]  # (1, 2)
    return float(softmax(logits)[0, 0])


def embed(model, texts: TextOrIds | Sequence[TextOrIds], normalize: bool = True) -> np.ndarray:
    """(N, D) sentence embeddings: hidden_states mean-pooled over real tokens (sentence-transformers'
    mean pooling, as all-MiniLM-L6-v2 uses), L2-normalised unless ``normalize`` is False."""
    _require_bert(model, "embed")
    batch = [texts] if isinstance(texts, str) or _is_ids(texts) else list(texts)
    if not batch:
        raise InputError("embed needs at least one text.")
    tokenizer = _tokenizer(model)
    cls, sep = _special(tokenizer, "cls"), _special(tokenizer, "sep")
    rows = [[cls, *_encode(model, tokenizer, t, f"texts[{i}]"), sep] for i, t in enumerate(batch)]
    arrays = _padded(rows, tokenizer.special_ids.get("pad", 0))
    hidden = model.run(**_declared(model, arrays))["hidden_states"]  # (N, T, D)
    weights = arrays["attention_mask"][..., None].astype(np.float64)  # (N, T, 1)
    pooled = (hidden * weights).sum(axis=1) / weights.sum(axis=1)  # (N, D)
    if normalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return pooled.astype(np.float32)


# ------------------------------------------------------------------------------------------ helpers


def _require_bert(model, task: str) -> None:
    if model.manifest.family != "bert":
        raise ConfigError(f"{task} needs a BERT artifact, but {model.path} holds a {model.manifest.family} model.")


def _tokenizer(model, required: bool = True):
    """The artifact's tokenizer; None when it ships none and none is required (ids in, ids out)."""
    if not required and not model.manifest.tokenizer:
        return None
    return model.tokenizer


def _special(tokenizer, role: str) -> int:
    if tokenizer is None or role not in tokenizer.special_ids:
        raise InputError(f"the artifact's tokenizer has no {role} token; pass token ids and the {role} id instead.")
    return tokenizer.special_ids[role]


def _encode(model, tokenizer, text_or_ids: TextOrIds, what: str) -> list[int]:
    from ..tokenizer import encode_checked

    if isinstance(text_or_ids, str):
        return encode_checked(tokenizer, text_or_ids, model.manifest.config["vocab_size"],
                              int(model.manifest.config["max_positions"]))
    return _as_ids(text_or_ids, what)


def _encode_masked(model, tokenizer, text: str) -> list[int]:
    """[CLS] text [SEP] with each MASK_MARKER replaced by the mask id (pieces encoded apart)."""
    mask = _special(tokenizer, "mask")
    ids = [_special(tokenizer, "cls")]
    for i, piece in enumerate(text.split(MASK_MARKER)):
        if i:
            ids.append(mask)
        ids += _encode(model, tokenizer, piece, "text")
    return ids + [_special(tokenizer, "sep")]


def _is_ids(value) -> bool:
    return not isinstance(value, str) and len(value) > 0 and all(isinstance(v, (int, np.integer)) for v in value)


def _as_ids(value, what: str) -> list[int]:
    array = np.asarray(value)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{what} must be text or a non-empty 1-D list of token ids; got {array.dtype} {array.shape}.")
    return [int(v) for v in array]


def _declared(model, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays the artifact takes: a model without token types (DistilBERT) has no token_type_ids."""
    names = {spec.name for spec in model.manifest.inputs}
    return {name: value for name, value in arrays.items() if name in names}


def _single(ids: list[int], types: list[int]) -> dict[str, np.ndarray]:
    """One sequence as a batch of 1, every token real."""
    return {"input_ids": np.array([ids], dtype=np.int64), "token_type_ids": np.array([types], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}


def _padded(rows: list[list[int]], pad: int) -> dict[str, np.ndarray]:
    """Rows right-padded to the longest, with the attention mask that hides the padding."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, dtype=np.int64)  # (N, T)
    mask = np.zeros((len(rows), width), dtype=np.int64)  # (N, T)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask}


def _candidates(probs: np.ndarray, k: int, tokenizer) -> list[Candidate]:
    top = np.argsort(-probs, kind="stable")[:k]  # ties keep the lower id first
    return [Candidate(int(i), float(probs[i]), tokenizer.decode([int(i)]) if tokenizer else None) for i in top]
