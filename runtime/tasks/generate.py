"""Text generation (GPT) with the artifact's KV-cache graphs (prefill once, then one decode per token).

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

import numpy as np

from ..errors import ArtifactError, ConfigError
from .graphs import graph_spec
from .kv_cache import KVCache
from .prompts import check_budget, decode_texts, left_pad, prompt_ids
from .sampling import Sampler

log = logging.getLogger(__name__)


@dataclass
class Generation:
    """New tokens per prompt (up to and including eos_id when it came), and their text."""

    ids: list[list[int]]
    text: list[str] | None  # None when the artifact has no tokenizer
    prompt_ids: list[list[int]]
    seconds: dict[str, float]  # "prefill" and "decode" wall time


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
    if "past_kv" in [s.name for s in graph_spec(manifest, "decode").inputs]:
        raise ArtifactError("this artifact's decode graph rebuilds its whole cache every step (an older "
                            "export); re-export it with this forgeline to generate with it.")
    sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    prompts = prompt_ids(model, prompt)
    check_budget(manifest, [len(p) for p in prompts], max_new_tokens)
    ids, mask = left_pad(prompts, pad_id=0)  # (B, T); the pad id never matters: masked everywhere
    started = time.perf_counter()
    out = model.run_graph("prefill", input_ids=ids, attention_mask=mask)
    seconds = {"prefill": time.perf_counter() - started}
    logits = out["logits"][:, -1]  # (B, V)
    started = time.perf_counter()
    new = _decode(model, logits, out["present"], mask, sampler, max_new_tokens, eos_id)
    seconds["decode"] = time.perf_counter() - started
    rows = [_cut_at_eos(row, eos_id) for row in new.tolist()]
    log.info("generated %d x %d tokens (prefill %.3f s, decode %.3f s)", len(rows), new.shape[1],
             seconds["prefill"], seconds["decode"])
    return Generation(ids=rows, text=decode_texts(model, rows), prompt_ids=prompts, seconds=seconds)


def _decode(model, logits, present, mask, sampler, max_new_tokens: int, eos_id: int | None) -> np.ndarray:
    """Sample, then decode one token per row per step until max_new_tokens or every row's eos:
    (B, N) new tokens. The cache is written in place (kv_cache.py); only logits come back."""
    decode = model.graph_executor("decode")
    cache = KVCache(decode, present, mask, int(model.manifest.config["max_positions"]))
    new = np.zeros((len(logits), 0), dtype=np.int64)
    while new.shape[1] < max_new_tokens:
        token = sampler(logits)  # (B,)
        new = np.concatenate([new, token[:, None]], axis=1)
        if new.shape[1] == max_new_tokens or (eos_id is not None and _all_done(new, eos_id)):
            break
        step_logits, new_kv = decode.run([token[:, None], *cache.inputs()])  # (B, 1, V), (L, 2, B, nh, 1, hs)
        logits = step_logits[:, 0]
        cache.append(new_kv)
    return new


def _all_done(new: np.ndarray, eos_id: int) -> bool:
    return bool((new == eos_id).any(axis=1).all())


def _cut_at_eos(row: list[int], eos_id: int | None) -> list[int]:
    return row[: row.index(eos_id) + 1] if eos_id is not None and eos_id in row else row
