"""The dense FFN, shared by the blocks (layers.make_ffn) and by MoE's shared expert (moe.py)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .activations import activation_fn


class FeedForward(nn.Module):
    """Linear - activation - Linear, or gated (SwiGLU): fc2(act(fc1(x)) * fc3(x)), Llama's
    down(act(gate(x)) * up(x)) under Meta's w1/w2/w3 names. forward returns (y, None) to match
    MoE's (y, routing)."""

    def __init__(self, config, d_ff: int | None = None):
        super().__init__()
        d_ff = d_ff or config.d_ff  # a shared expert has its own width
        self.fc1 = nn.Linear(config.d_model, d_ff, bias=config.ffn_bias)
        self.fc2 = nn.Linear(d_ff, config.d_model, bias=config.ffn_bias)
        self.fc3 = nn.Linear(config.d_model, d_ff, bias=config.ffn_bias) if config.gated_ffn else None
        self.act = activation_fn(config.activation)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        h = self.act(self.fc1(x))  # (B, T, F)
        if self.fc3 is not None:
            h = h * self.fc3(x)
        return self.dropout(self.fc2(h)), None  # (B, T, D)
