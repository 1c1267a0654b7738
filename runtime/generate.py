"""Text generation (GPT) and translation (Transformer) with the artifact's KV-cache graphs.

Runtime only (numpy + the chosen backend). Prompts of unequal length are left-padded: the mask
is 0 on padding, positions count real tokens only, and MoE layers never route padding, so each
row continues exactly as it would alone in a batch of equal-length rows. Expert-choice routing
still groups the tokens at one position across the batch (define/moe.py): rows influence each
other's routing by design, in the cache and in a full recompute alike. A row that has emitted
``eos_id`` keeps being decoded (its tokens are dropped from the result) so that the batch, and
with it every other row's routing, stays what a full recompute of the whole batch sees.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import ArtifactError, ConfigError, InputError
from .format import GraphSpec, Manifest
from .tokenizer import encode_checked

log = logging.getLogger(__name__)


@dataclass
class Generation:
    """New tokens per prompt (up to and including eos_id when it came), and their text."""

    ids: list[list[int]]
    text: list[str] | None  # None when the artifact has no tokenizer
    prompt_ids: list[list[int]]
    seconds: dict[str, float]  # "prefill" and "decode" wall time


def graph_spec(manifest: Manifest, name: str) -> GraphSpec:
    if name not in manifest.graphs:
        raise ArtifactError(
            f"the artifact of {manifest.name} has no {name!r} graph (it has: {', '.join(manifest.graphs) or 'none'}); "
            "re-export it with this forgeline (generation graphs are exported for gpt and transformer models)."
        )
    return manifest.graphs[name]


def open_graph(model, name: str):
    """An executor for graph ``name`` on the model's backend (and TVM build)."""
    spec = graph_spec(model.manifest, name)
    if model.build is None:
        from .ort_executor import OrtExecutor

        return OrtExecutor(model.path / spec.onnx)
    lib = model.build.graph_libs.get(name)
    if lib is None:
        raise ArtifactError(
            f"TVM build {model.build.tag} has no library for the {name!r} graph; recompile the artifact "
            "with `forgeline compile DIR`, or use backend='ort'."
        )
    from .tvm_executor import TvmExecutor

    return TvmExecutor(model.path / lib, device=model.build.device)


def generate(model, prompt, max_new_tokens: int = 32, *, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, eos_id: int | None = None) -> Generation:
    """Continue each prompt by up to ``max_new_tokens`` tokens: greedy at temperature 0, else sampled.

    ``prompt``: token ids (a list of ints, or a list of such lists for a batch of unequal lengths)
    or text (a string or a list of strings) when the artifact has a tokenizer. Sampling draws from
    numpy's Generator(seed), so a seed makes it reproducible.
    """
    manifest = model.manifest
    if manifest.family != "gpt":
        raise ConfigError(f"generate needs a gpt model, but this artifact holds {manifest.family}; "
                          "use translate for a transformer.")
    for name in ("prefill", "decode"):
        graph_spec(manifest, name)  # a sentence now rather than after the prefill
    sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    prompts = _prompt_ids(model, prompt)
    _check_budget(manifest, [len(p) for p in prompts], max_new_tokens)
    ids, mask = left_pad(prompts, pad_id=0)  # (B, T); the pad id never matters: masked everywhere
    started = time.perf_counter()
    out = model.run_graph("prefill", input_ids=ids, attention_mask=mask)
    seconds = {"prefill": time.perf_counter() - started}
    logits, cache = out["logits"][:, -1], out["present"]  # (B, V), (L, 2, B, nh, T, hs)
    new = np.zeros((len(prompts), 0), dtype=np.int64)
    started = time.perf_counter()
    while True:
        token = sampler(logits)  # (B,)
        new = np.concatenate([new, token[:, None]], axis=1)
        if new.shape[1] == max_new_tokens or (eos_id is not None and _all_done(new, eos_id)):
            break
        out = model.run_graph("decode", input_ids=token[:, None], past_mask=mask, past_kv=cache)
        logits, cache = out["logits"][:, 0], out["present"]
        mask = np.concatenate([mask, np.ones_like(mask[:, :1])], axis=1)  # (B, P+1)
    seconds["decode"] = time.perf_counter() - started
    rows = [_cut_at_eos(row, eos_id) for row in new.tolist()]
    log.info("generated %d x %d tokens (prefill %.3f s, decode %.3f s)", len(rows), new.shape[1],
             seconds["prefill"], seconds["decode"])
    return Generation(ids=rows, text=_texts(model, rows), prompt_ids=prompts, seconds=seconds)


def translate(model, src, max_new_tokens: int = 32, *, bos_id: int | None = None,
              eos_id: int | None = None) -> Generation:
    """Greedy translation: encode each source once, then decode with the decoder's KV cache.

    ``src``: ids or text, one or a list. Sources are translated one at a time (the encoder has no
    source padding mask, so sources of unequal length are not batched). ``bos_id``/``eos_id``
    default to the tokenizer's bos/eos.
    """
    manifest = model.manifest
    if manifest.family != "transformer":
        raise ConfigError(f"translate needs a transformer model, but this artifact holds {manifest.family}.")
    for name in ("encode", "prefill", "decode"):
        graph_spec(manifest, name)
    sources = _prompt_ids(model, src)
    bos_id, eos_id = _bos_eos(model, bos_id, eos_id)
    _check_budget(manifest, [len(s) for s in sources], 0)
    _check_budget(manifest, [1], max_new_tokens)
    started = time.perf_counter()
    rows = [_translate_one(model, s, max_new_tokens, bos_id, eos_id) for s in sources]
    seconds = {"decode": time.perf_counter() - started}
    return Generation(ids=rows, text=_texts(model, rows), prompt_ids=sources, seconds=seconds)


def _translate_one(model, source: list[int], max_new_tokens: int, bos_id: int, eos_id: int | None) -> list[int]:
    memory = model.run_graph("encode", src_ids=np.array([source], dtype=np.int64))["memory"]  # (1, S, D)
    out = model.run_graph("prefill", tgt_ids=np.array([[bos_id]], dtype=np.int64), memory=memory)
    logits, cache = out["logits"][:, -1], out["present"]
    new: list[int] = []
    while True:
        token = int(np.argmax(logits[0]))
        new.append(token)
        if len(new) == max_new_tokens or token == eos_id:
            return new
        out = model.run_graph("decode", tgt_ids=np.array([[token]], dtype=np.int64), memory=memory, past_kv=cache)
        logits, cache = out["logits"][:, 0], out["present"]


@dataclass(frozen=True, kw_only=True)
class Sampler:
    """Picks the next token from (B, V) logits: argmax at temperature 0, else top-k/top-p sampling."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature} must be 0 (greedy) or positive.")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k={self.top_k} must be at least 1.")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p} must be in (0, 1].")
        object.__setattr__(self, "_rng", np.random.default_rng(self.seed))

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        if self.temperature == 0:
            return np.argmax(logits, axis=-1).astype(np.int64)  # (B,) first index on ties, as torch
        probs = self._probs(logits.astype(np.float64) / self.temperature)  # (B, V)
        return np.array([self._rng.choice(len(p), p=p) for p in probs], dtype=np.int64)

    def _probs(self, scaled: np.ndarray) -> np.ndarray:
        if self.top_k is not None and self.top_k < scaled.shape[-1]:
            kth = np.sort(scaled, axis=-1)[:, -self.top_k][:, None]  # (B, 1)
            scaled = np.where(scaled < kth, -np.inf, scaled)
        probs = np.exp(scaled - scaled.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)  # (B, V)
        if self.top_p is not None and self.top_p < 1:
            order = np.argsort(-probs, axis=-1, kind="stable")  # (B, V) most likely first
            sorted_p = np.take_along_axis(probs, order, -1)
            keep_sorted = np.cumsum(sorted_p, -1) - sorted_p < self.top_p  # the smallest set reaching top_p
            keep = np.zeros_like(keep_sorted)
            np.put_along_axis(keep, order, keep_sorted, -1)
            probs = np.where(keep, probs, 0.0)
            probs /= probs.sum(-1, keepdims=True)
        return probs


def left_pad(rows: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of unequal length -> ids (B, T) int64, left-padded with pad_id, and mask (B, T) (1 = real)."""
    T = max(len(r) for r in rows)
    ids = np.full((len(rows), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), T), dtype=np.int64)
    for b, row in enumerate(rows):
        ids[b, T - len(row):] = row
        mask[b, T - len(row):] = 1
    return ids, mask


def _prompt_ids(model, prompt) -> list[list[int]]:
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


def _check_budget(manifest: Manifest, lengths: list[int], max_new_tokens: int) -> None:
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


def _bos_eos(model, bos_id: int | None, eos_id: int | None) -> tuple[int, int | None]:
    if bos_id is None or eos_id is None:
        specials = model.tokenizer.special_ids if model.manifest.tokenizer else {}
        bos_id = specials.get("bos") if bos_id is None else bos_id
        eos_id = specials.get("eos") if eos_id is None else eos_id
    if bos_id is None:
        raise ConfigError("translate needs a start token: pass bos_id (the artifact's tokenizer names none).")
    return bos_id, eos_id


def _all_done(new: np.ndarray, eos_id: int) -> bool:
    return bool((new == eos_id).any(axis=1).all())


def _cut_at_eos(row: list[int], eos_id: int | None) -> list[int]:
    return row[: row.index(eos_id) + 1] if eos_id is not None and eos_id in row else row


def _texts(model, rows: list[list[int]]) -> list[str] | None:
    if not model.manifest.tokenizer:
        return None
    return [model.tokenizer.decode(row) for row in rows]
