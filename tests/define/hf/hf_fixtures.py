"""Small `transformers` checkpoints with seeded random weights, saved with save_pretrained.

`transformers` is the reference implementation here, never a forgeline dependency. Every weight
is scrambled (norm scales near 1, the rest N(0, 0.2)), so a swapped or skipped tensor shows up.
"""

from __future__ import annotations

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ATOL, RTOL = 1e-4, 1e-3  # runtime/format.py DEFAULT_TOLERANCE (fp32)
NORM_NAMES = ("norm", "LayerNorm", "layer_norm", "ln_")


def scramble(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm_scale = name.endswith("weight") and any(n in name for n in NORM_NAMES) and p.dim() == 1
            p.copy_(1 + 0.1 * noise if is_norm_scale else 0.2 * noise)


def save_reference(model_class, config, seed: int, folder, **save_kwargs):
    """(reference model in eval mode, folder) after save_pretrained(folder)."""
    torch.manual_seed(0)
    model = model_class(config).eval()
    scramble(model, seed)
    model.save_pretrained(folder, **save_kwargs)
    return model, folder


def hf_greedy(reference, prompt: list[int], steps: int) -> list[int]:
    """transformers' own greedy generate: the new tokens only."""
    ids = torch.tensor([prompt])
    out = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, min_new_tokens=steps,
                             do_sample=False, pad_token_id=0)
    assert out.shape[1] == len(prompt) + steps
    return out[0, len(prompt):].tolist()


def build_from_hf(folder, out):
    """`forgeline build --from-hf FOLDER -o OUT`, no model name: the architecture is config.json's."""
    from forgeline.cli.app import main

    assert main(["-q", "build", "--from-hf", str(folder), "-o", str(out)]) == 0
    return out
