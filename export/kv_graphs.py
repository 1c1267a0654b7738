"""Export the extra graphs of incremental decoding beside model.onnx.

GPT (dense and MoE):
  prefill  input_ids, attention_mask (batch, seq)               -> logits (batch, seq, V), present
  decode   input_ids (batch, 1), past_mask (batch, past),
           past_k_0, past_v_0, ... (batch, nh, past, hs)       -> logits (batch, 1, V),
                                                                   new_kv (L, 2, batch, nh, 1, hs)
Transformer (encoder-decoder):
  encode   src_ids (batch, src_seq)                             -> memory (batch, src_seq, D)
  prefill  tgt_ids (batch, tgt_seq), memory                     -> logits, present
  decode   tgt_ids (batch, 1), memory, past_kv                  -> logits (batch, 1, V), present

``present`` stacks every layer's k and v, (L, 2, batch, nh, length, hs), so a cache is one array.
GPT's decode graph only reads its per-layer caches, which the runtime preallocates and may make
longer than what they hold (masked columns), and returns the new token's k and v for the runtime
to write in place: a step copies O(new tokens), not the cache (runtime/tasks/kv_cache.py). The
Transformer's decode step still returns the whole grown cache. The decode graphs never compute a
length from shapes: the new position comes from the mask (GPT) or the cache (Transformer), which
keeps one symbolic ``past`` that TVM can tie (docs/tvm-notes.md). BERT has no generation graphs.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from forgeline.define import ForgelineModel
from forgeline.define.moe import trace_shift
from forgeline.runtime.errors import ExportError, error_summary
from forgeline.runtime import progress
from forgeline.runtime.format import GraphSpec, TensorSpec

from .onnx_export import check_onnx, forget_matched_graphs

log = logging.getLogger(__name__)

# Trace sizes: every symbolic dim at least 2 and distinct, so torch.export keeps them symbolic.
_TRACE = {"batch": 2, "seq": 8, "past": 9, "src_seq": 10, "tgt_seq": 8}


@dataclass(frozen=True)
class _Graph:
    name: str
    method: str  # the model method the graph runs
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class _Method(torch.nn.Module):
    """Exposes one method of the model as forward, for torch.export."""

    def __init__(self, model: ForgelineModel, method: str):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, *args):
        return getattr(self.model, self.method)(*args)


def generation_graphs(model: ForgelineModel) -> list[_Graph]:
    """The graphs incremental decoding needs for this model's family (none for BERT)."""
    c = model.config
    V, D, nh, hs = c.vocab_size, c.d_model, c.n_kv_heads, c.head_dim  # the cache holds KV heads
    ids = lambda name, *dims: TensorSpec(name, "int64", dims, (0, V))  # noqa: E731
    flt = lambda name, *dims: TensorSpec(name, "float32", dims)  # noqa: E731
    if c.family == "gpt":
        L = c.n_layers
        return [
            _Graph("prefill", "prefill",
                   [ids("input_ids", "batch", "seq"), TensorSpec("attention_mask", "int64", ("batch", "seq"), (0, 2))],
                   [flt("logits", "batch", "seq", V), flt("present", L, 2, "batch", nh, "seq", hs)]),
            _Graph("decode", "decode_step",
                   [ids("input_ids", "batch", 1), TensorSpec("past_mask", "int64", ("batch", "past"), (0, 2)),
                    *(flt(f"past_{kv}_{i}", "batch", nh, "past", hs) for i in range(L) for kv in "kv")],
                   [flt("logits", "batch", 1, V), flt("new_kv", L, 2, "batch", nh, 1, hs)]),
        ]
    if c.family == "transformer":
        L = c.n_decoder_layers
        memory = flt("memory", "batch", "src_seq", D)
        return [
            _Graph("encode", "encode", [ids("src_ids", "batch", "src_seq")], [memory]),
            _Graph("prefill", "decoder_prefill", [ids("tgt_ids", "batch", "tgt_seq"), memory],
                   [flt("logits", "batch", "tgt_seq", V), flt("present", L, 2, "batch", nh, "tgt_seq", hs)]),
            _Graph("decode", "decoder_step", [ids("tgt_ids", "batch", 1), memory, flt("past_kv", L, 2, "batch", nh, "past", hs)],
                   [flt("logits", "batch", 1, V), flt("present", L, 2, "batch", nh, "past+1", hs)]),
        ]
    return []


def export_generation_graphs(model: ForgelineModel, out_dir: Path) -> dict[str, GraphSpec]:
    """Export each generation graph to ``out_dir/<name>.onnx``; the GraphSpecs for the manifest."""
    specs = {}
    for graph in generation_graphs(model):
        filename = f"{graph.name}.onnx"
        with progress.stage(f"export the {graph.name} graph"):
            _export(model, graph, Path(out_dir) / filename)
        specs[graph.name] = GraphSpec(filename, graph.inputs, graph.outputs)
    return specs


def _example(spec: TensorSpec, gen: torch.Generator, sizes: dict[str, int]) -> torch.Tensor:
    shape = tuple(d if isinstance(d, int) else sizes[d] for d in spec.dims)
    if spec.dtype == "float32":
        return torch.randn(shape, generator=gen)
    lo, hi = spec.value_range
    return torch.randint(max(lo, 1) if hi == 2 else lo, hi, shape, generator=gen)  # masks all real


def _export(model: ForgelineModel, graph: _Graph, path: Path) -> None:
    limit = model.config.max_positions
    dims = {n: torch.export.Dim(n, min=1, max=(1 << 20) if n == "batch" else limit) for n in _TRACE}
    dynamic_shapes = tuple({a: dims[d] for a, d in enumerate(s.dims) if isinstance(d, str)} for s in graph.inputs)
    gen = torch.Generator().manual_seed(0)
    shift = trace_shift(model)  # MoE slot lists must not trace at one slot
    sizes = {n: v + shift if n == "batch" else min(v + shift, limit - 1) for n, v in _TRACE.items()}
    example = tuple(_example(s, gen, sizes) for s in graph.inputs)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Method(model, graph.method).eval(), example, str(path), dynamo=True,
                input_names=[s.name for s in graph.inputs], output_names=[s.name for s in graph.outputs],
                dynamic_shapes={"args": dynamic_shapes}, external_data=True, verbose=False,
            )
    except Exception as exc:  # the exporter raises many internal types; the user needs one sentence
        raise ExportError(f"exporting the {graph.name} graph of {model.config.name} failed: {error_summary(exc)}") from exc
    log.info("exported the %s graph in %.1f s", graph.name, time.perf_counter() - start)
    forget_matched_graphs()
    check_onnx(path)
