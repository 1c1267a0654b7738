"""Where a bf16 build loses top-1 agreement: the weights' rounding or the activations'.

forgeline's bf16 dense layers round the weight to bf16 at build time, round the activation to
bf16 per call and sum the products in fp32 (docs/precision.md); attention, layer norm and softmax
stay fp32. This script replays that in eager PyTorch, one rounding at a time, on a model of the
registry, and prints the top-1 agreement of each variant with eager fp32 on the same inputs:

- ``weights + activations``: what the build does;
- ``weights only`` / ``activations only``: one of the two roundings;
- ``weights + split activations``: the activation as two bf16 terms (``hi = bf16(x)``,
  ``lo = bf16(x - hi)``), each multiplied by the bf16 weight, which removes the activation's
  rounding at twice the multiply-adds;
- ``weights of <layer> only``: the weight rounding of one kind of layer (``fc1``, ``lm_head``, ...).

No compiler is involved, so the figures say what any kernel with these roundings can reach.

    python benchmarks/bf16_rounding.py --model gpt --preset small --batch 8 --seq 128
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own alias
from torch import nn


def bf16(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to bf16 (to nearest, ties to even) and back to fp32."""
    return t.to(torch.bfloat16).float()


def rounded_linear(round_weight: bool, activations: str) -> Callable:
    """``F.linear`` with the weight and/or the activation rounded as a bf16 kernel would.

    ``activations``: "fp32" (kept), "bf16" (rounded) or "split" (hi + lo, two bf16 terms)."""
    plain = F.linear

    def linear(x, weight, bias=None):
        w = bf16(weight) if round_weight else weight
        if activations == "bf16":
            y = plain(bf16(x), w)
        elif activations == "split":
            hi = bf16(x)
            y = plain(hi, w) + plain(bf16(x - hi), w)
        else:
            y = plain(x, w)
        return y if bias is None else y + bias

    return linear


def logits_of(model: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(*inputs)
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out[0] if isinstance(out, (tuple, list)) else out


def agreement(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.argmax(-1) == want.argmax(-1)).float().mean())


def with_linear(model: nn.Module, inputs, linear: Callable) -> torch.Tensor:
    """The model's logits with every ``nn.Linear`` computed by ``linear``."""
    plain = F.linear
    F.linear = linear  # nn.Linear.forward calls F.linear through the module attribute
    try:
        return logits_of(model, inputs)
    finally:
        F.linear = plain


def with_weights_rounded(model: nn.Module, inputs, kind: str) -> torch.Tensor:
    """The model's logits with the weights of the Linear layers named ``*.kind`` rounded to bf16."""
    layers = [m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.split(".")[-1] == kind]
    saved = [m.weight.data for m in layers]
    for m in layers:
        m.weight.data = bf16(m.weight.data)
    try:
        return logits_of(model, inputs)
    finally:
        for m, w in zip(layers, saved):
            m.weight.data = w


def main(argv: list[str] | None = None) -> None:
    from forgeline.define import build_model, get_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt")
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="weight init seed (the registry's init)")
    args = p.parse_args(argv)

    model = build_model(get_config(args.model, args.preset), seed=args.seed).eval()
    inputs = model.example_inputs({"batch": args.batch, "seq": args.seq}, torch.Generator().manual_seed(1))
    want = logits_of(model, inputs)
    rows = [(label, agreement(with_linear(model, inputs, rounded_linear(w, a)), want)) for label, w, a in (
        ("weights + activations (the bf16 build)", True, "bf16"),
        ("weights only", True, "fp32"),
        ("activations only", False, "bf16"),
        ("weights + split activations", True, "split"),
    )]
    kinds = sorted({name.split(".")[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
    rows += [(f"weights of {kind} only", agreement(with_weights_rounded(model, inputs, kind), want)) for kind in kinds]
    positions = want.shape[0] * want.shape[1] if want.ndim == 3 else want.shape[0]
    print(f"{args.model}/{args.preset}, seed {args.seed}, {args.batch}x{args.seq} inputs: "
          f"top-1 agreement with eager fp32 over {positions} positions\n")
    print("| rounded to bf16 | top-1 |\n|---|---|")
    for label, share in rows:
        print(f"| {label} | {share:.2%} |")


if __name__ == "__main__":
    main()
