"""What a benchmark runs: random inputs at (batch, seq) and the FLOP model of one forward pass."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from forgeline.runtime.errors import ConfigError
from forgeline.runtime.format import Manifest
from forgeline.runtime.inputs import random_inputs, symbolic_dims


def bench_inputs(manifest: Manifest, options) -> dict[str, np.ndarray]:
    """Random valid inputs at (options.batch, options.seq), every token real (masks all ones)."""
    dims = {}
    for dim in symbolic_dims(manifest.inputs):
        size = options.batch if dim == "batch" else options.seq  # every other symbolic dim is a length
        limit = manifest.dim_limits.get(dim)
        if limit is not None and size > limit:
            raise ConfigError(f"{dim}={size} exceeds the artifact's limit of {limit}; bench a "
                              "smaller --batch/--seq.")
        dims[dim] = size
    return random_inputs(manifest.inputs, dims, options.seed, real_masks=True)


def estimate_flops(config: dict[str, Any], batch: int, seq: int) -> float | None:
    """Multiply-add FLOPs of one forward pass (2 per MAC), from the model config.

    Counts the matmuls, which are all but a few percent of the work: per layer the four
    attention projections (4 d^2), the two attention products (2 T d) and the FFN (2 d f), MoE
    layers running their experts on their slots only (``_expert_rows_per_token`` * 2 d f + d E),
    and the output head (d V). None for families it does not know (the encoder-decoder
    Transformer).
    """
    family = config.get("family")
    if family not in ("gpt", "bert"):
        return None
    d, f, v, layers = config["d_model"], config["d_ff"], config["vocab_size"], config["n_layers"]
    moe = config.get("router", "none") != "none"
    every, experts = config.get("moe_every", 1), config.get("n_experts", 1)
    macs_per_token = 0.0
    for layer in range(layers):
        is_moe = moe and (layer + 1) % every == 0
        ffn = _expert_rows_per_token(config, batch, seq) * 2 * d * f + d * experts if is_moe else 2 * d * f
        macs_per_token += 4 * d * d + 2 * seq * d + ffn
    macs_per_token += d * v + (d * d if family == "bert" else 0)  # head (+ BERT's MLM transform)
    return 2.0 * macs_per_token * batch * seq


def _expert_rows_per_token(config: dict[str, Any], batch: int, seq: int) -> float:
    """Expert FFN rows an MoE layer computes per token: E slot lists of min(n, ceil(n * r)) slots
    per group of n tokens (a sequence; for GPT one position across the batch), r = picks * c / E."""
    experts = config.get("n_experts", 1)
    picks = config.get("router_top_k", 1) if config.get("router") == "token_choice" else 1
    n = batch if config.get("family") == "gpt" else seq
    slots = min(n, math.ceil(n * picks * config.get("capacity_factor", 2.0) / experts - 1e-9))
    return experts * slots / n
