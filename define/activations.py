"""FFN nonlinearities by config name, shared by the dense FFN (layers.py) and the experts (moe.py)."""

from __future__ import annotations

import torch.nn.functional as F


def activation_fn(name: str):
    """The FFN nonlinearity by config name."""
    if name == "relu":
        return F.relu
    if name == "silu":  # Llama's SwiGLU gate
        return F.silu
    if name == "gelu_tanh":  # GPT-2's "gelu_new"
        return lambda x: F.gelu(x, approximate="tanh")
    return F.gelu
