"""Greedy translation (encoder-decoder Transformer): encode once, then decode with the KV cache."""

from __future__ import annotations

import time

import numpy as np

from ..errors import ConfigError
from .generate import Generation
from .graphs import graph_spec
from .prompts import check_budget, check_prompt_lengths, decode_texts, prompt_ids


def translate(model, src, max_new_tokens: int = 32, *, bos_id: int | None = None,
              eos_id: int | None = None) -> Generation:
    """Greedy translation: encode each source once, then decode with the decoder's KV cache.

    ``src``: ids or text, one or a list. Sources are translated one at a time (the encoder has no
    source padding mask, so sources of unequal length are not batched). ``bos_id``/``eos_id``
    default to the model's own (an imported BART's decoder_start_token_id and eos_token_id), else
    the tokenizer's bos/eos.
    """
    manifest = model.manifest
    if manifest.family != "transformer":
        raise ConfigError(f"translate needs a transformer model, but this artifact holds {manifest.family}.")
    for name in ("encode", "prefill", "decode"):
        graph_spec(manifest, name)
    sources = _framed(model, src, prompt_ids(model, src))
    bos_id, eos_id = _bos_eos(model, bos_id, eos_id)
    check_prompt_lengths(manifest, [len(s) for s in sources])
    check_budget(manifest, [1], max_new_tokens)  # the target starts from bos alone
    started = time.perf_counter()
    rows = [_translate_one(model, s, max_new_tokens, bos_id, eos_id) for s in sources]
    seconds = {"decode": time.perf_counter() - started}
    return Generation(ids=rows, text=decode_texts(model, rows), prompt_ids=sources, seconds=seconds)


def _framed(model, src, sources: list[list[int]]) -> list[list[int]]:
    """Text sources of a model with its own start id (an imported BART) framed as its tokenizer
    frames them, <s> text </s>; ids are taken as given."""
    is_text = isinstance(src, (str, bytes)) or (isinstance(src, (list, tuple)) and src and isinstance(src[0], (str, bytes)))
    specials = model.tokenizer.special_ids if model.manifest.tokenizer else {}
    if not is_text or model.manifest.config.get("decoder_start_id", -1) < 0 or not {"bos", "eos"} <= set(specials):
        return sources
    return [[specials["bos"], *row, specials["eos"]] for row in sources]


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


def _bos_eos(model, bos_id: int | None, eos_id: int | None) -> tuple[int, int | None]:
    config = model.manifest.config
    own_bos, own_eos = config.get("decoder_start_id", -1), config.get("eos_id", -1)  # -1: none
    bos_id = own_bos if bos_id is None and own_bos >= 0 else bos_id
    eos_id = own_eos if eos_id is None and own_eos >= 0 else eos_id
    if bos_id is None or eos_id is None:
        specials = model.tokenizer.special_ids if model.manifest.tokenizer else {}
        bos_id = specials.get("bos") if bos_id is None else bos_id
        eos_id = specials.get("eos") if eos_id is None else eos_id
    if bos_id is None:
        raise ConfigError("translate needs a start token: pass bos_id (the artifact's tokenizer names none).")
    return bos_id, eos_id
