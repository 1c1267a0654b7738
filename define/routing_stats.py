"""Routing statistics from the routing.{i} outputs. Imports only numpy (the runtime uses it too)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LayerRoutingStats:
    tokens_per_expert: np.ndarray  # (E,) tokens each expert processed
    experts_per_token: np.ndarray  # (E + 1,) number of tokens processed by 0, 1, ..., E experts
    unprocessed_fraction: float  # share of tokens no expert processed (they ride the residual)
    n_tokens: int  # tokens counted (padding excluded when a token mask is given)


@dataclass
class RoutingStats:
    layers: list[LayerRoutingStats]

    def format(self) -> str:
        """A short table: one row per MoE layer."""
        lines = []
        for i, layer in enumerate(self.layers):
            E = len(layer.tokens_per_expert)
            mean = float((np.arange(E + 1) * layer.experts_per_token).sum()) / max(layer.n_tokens, 1)
            lines.append(f"routing.{i}: {layer.n_tokens} tokens, {E} experts, "
                         f"{mean:.2f} experts/token, {100 * layer.unprocessed_fraction:.1f}% unprocessed")
            lines.append("  tokens per expert: " + " ".join(str(int(v)) for v in layer.tokens_per_expert))
            lines.append("  tokens by #experts 0..E: " + " ".join(str(int(v)) for v in layer.experts_per_token))
        return "\n".join(lines)


def routing_stats(routing_masks, token_mask=None) -> RoutingStats:
    """routing_masks: one (B, T, E) 0/1 array per MoE layer (numpy, or anything np.asarray takes,
    torch tensors included). token_mask: optional (B, T) 1 = real token, to leave out padding."""
    layers = []
    for mask in routing_masks:
        mask = np.asarray(mask).astype(np.int64)
        if mask.ndim != 3:
            raise ValueError(f"a routing mask must be (batch, seq, n_experts); got shape {mask.shape}.")
        E = mask.shape[-1]
        flat = mask.reshape(-1, E)  # (N, E)
        if token_mask is not None:
            real = np.asarray(token_mask).reshape(-1) != 0
            if real.shape[0] != flat.shape[0]:
                raise ValueError(f"token_mask has {real.shape[0]} tokens but the routing mask has {flat.shape[0]}.")
            flat = flat[real]
        per_token = flat.sum(-1)  # (N,)
        n = int(flat.shape[0])
        layers.append(LayerRoutingStats(
            tokens_per_expert=flat.sum(0),
            experts_per_token=np.bincount(per_token, minlength=E + 1)[: E + 1],
            unprocessed_fraction=float((per_token == 0).mean()) if n else 0.0,
            n_tokens=n,
        ))
    return RoutingStats(layers)
