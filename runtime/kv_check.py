"""Check an artifact's generation graphs (prefill, decode, encode) against its golden eager logits.

Golden case 0 holds the eager logits of the plain forward pass. Run through the generation
graphs as prefill of all but the last token followed by one cached decode step (GPT), or encode
+ prefill + one decode step (Transformer), it must give the same logits within the artifact's
tolerance: the cache, the positions and the masks are then all in play. GPT's step gets a cache
with unwritten (masked) room after the prefill's columns, as the decoding loop's cache has.

``checked_stage`` is what a build and ``forgeline check`` run: the main graph on every case, then
the generation graphs, with the model's executors released between graphs, so that one ONNX
Runtime session (each holds its own copy of the weights) is alive at a time, never three.
"""

from __future__ import annotations

import logging

import numpy as np

from .format import GOLDEN_FILE, OutputParity, StageRecord
from .golden import GoldenCase, load_golden
from .parity import compare_outputs, stage_record

log = logging.getLogger(__name__)


def checked_stage(model, cases: list[GoldenCase] | None = None) -> StageRecord:
    """The model on every case (golden.npz's by default) plus its generation graphs' rows against
    the first case, one graph loaded at a time; the model's executors are released when it returns
    (a next call opens them again)."""
    record = model.selfcheck(cases)
    model.release()
    return with_generation_rows(record, model, cases[0] if cases else None, release=True)


def with_generation_rows(record: StageRecord, model, case: GoldenCase | None = None,
                         release: bool = False) -> StageRecord:
    """``record`` (a backend's golden selfcheck) plus the generation graphs' rows, case "<case>/generation".

    ``case`` is the reference (golden case 0 with eager outputs computed now, from ``forgeline
    check``); by default golden.npz's case 0 as stored. ``release``: release the model's executors
    after each graph's run.
    """
    rows = generation_parity(model, case, release)
    if not rows:
        return record
    log.info("%s generation graphs vs eager: %s", record.stage, "pass" if all(r.passed for r in rows) else "FAIL")
    return stage_record(record.stage, record.parity + rows, record.tolerance, model.routing_flip_bound)


def generation_parity(model, case: GoldenCase | None = None, release: bool = False) -> list[OutputParity]:
    """Rows for a loaded Model's generation graphs; empty when the artifact has none."""
    manifest = model.manifest
    if "decode" not in manifest.graphs or GOLDEN_FILE not in manifest.files:
        return []
    missing = sorted(set(manifest.graphs) - set(model.build.graph_libs)) if model.build is not None else []
    if missing:  # a build without its generation graphs cannot generate: that fails the stage
        note = f"build {model.build.tag} has no library for the {', '.join(missing)} graph(s)"
        return [OutputParity("logits", "generation", float("inf"), float("inf"), 1.0, False, note=note)]
    case = case if case is not None else load_golden(model.path / GOLDEN_FILE)[0]
    if manifest.family == "gpt":
        ids = case.inputs["input_ids"]  # (B, T)
        ones = np.ones_like(ids)
        out = _run(model, release, "prefill", input_ids=ids[:, :-1], attention_mask=ones[:, :-1])
        step = _run(model, release, "decode", input_ids=ids[:, -1:], **_roomy_cache(out["present"]))
    else:
        memory = _run(model, release, "encode", src_ids=case.inputs["src_ids"])["memory"]
        tgt = case.inputs["tgt_ids"]  # (B, T)
        out = _run(model, release, "prefill", tgt_ids=tgt[:, :-1], memory=memory)
        step = _run(model, release, "decode", tgt_ids=tgt[:, -1:], memory=memory, past_kv=out["present"])
    got = {"logits": np.concatenate([out["logits"], step["logits"]], axis=1)}  # (B, T, V)
    return compare_outputs({"logits": case.outputs["logits"]}, got, model.tolerance, f"{case.name}/generation")


def _run(model, release: bool, graph: str, **arrays: np.ndarray) -> dict[str, np.ndarray]:
    """One graph's outputs; with ``release``, its executor is closed right after."""
    out = model.run_graph(graph, **arrays)
    if release:
        model.release()
    return out


_ROOM = 3  # unwritten cache columns past the prefill's: they must change nothing


def _roomy_cache(present: np.ndarray) -> dict[str, np.ndarray]:
    """GPT decode inputs from a prefill's present (L, 2, B, nh, T, hs): mask and per-layer caches
    (B, nh, T + _ROOM, hs), the extra columns zero and masked."""
    L, _, B, nh, T, hs = present.shape
    mask = np.zeros((B, T + _ROOM), dtype=np.int64)
    mask[:, :T] = 1
    cache = np.zeros((L, 2, B, nh, T + _ROOM, hs), dtype=present.dtype)
    cache[..., :T, :] = present
    return {"past_mask": mask, **{f"past_{kv}_{i}": cache[i, j] for i in range(L) for j, kv in enumerate("kv")}}
