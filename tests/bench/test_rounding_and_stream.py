"""benchmarks/bf16_rounding.py's roundings against hand calculations, and
benchmarks/moe_weight_stream.py's kernel against numpy on the tiles it lays out."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def test_bf16_rounds_to_nearest_with_ties_to_even(bench_script):
    rounding = bench_script("bf16_rounding")
    # bf16 keeps 7 fraction bits: next to 1.0 the steps are 2^-7
    x = torch.tensor([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -12, -(1 + 2 ** -8)])
    want = torch.tensor([1.0, 1 + 2 ** -6, 1 + 2 ** -7, -1.0])  # tie down to even, tie up to even, above the tie
    assert torch.equal(rounding.bf16(x), want)


@pytest.mark.parametrize("activations,round_weight", [("fp32", True), ("bf16", False), ("split", True)])
def test_each_linear_rounds_only_what_it_names(bench_script, activations, round_weight):
    rounding = bench_script("bf16_rounding")
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(5, 32, generator=g), torch.randn(16, 32, generator=g), torch.randn(16, generator=g)
    got = rounding.rounded_linear(round_weight, activations)(x, w, b).double()
    w_used = w.to(torch.bfloat16).double() if round_weight else w.double()
    x_used = x.to(torch.bfloat16).double() if activations == "bf16" else x.double()
    want = x_used @ w_used.T + b.double()
    # split activations: hi + lo carries x to 16 significant bits, so only that residue remains
    atol = 32 * 2 ** -17 * float(x.abs().max() * w.abs().max()) if activations == "split" else 1e-4
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=atol, rtol=0)
    if activations == "split":  # and it is closer to the exact product than rounding x once
        once = x.to(torch.bfloat16).double() @ w_used.T + b.double()
        assert (got - want).abs().max() < (once - want).abs().max() / 10


def test_weight_stream_kernel_computes_every_expert_on_its_own_rows(bench_script):
    stream = bench_script("moe_weight_stream")
    fn, isa = stream.build(64, 32)
    experts, rows = 3, 11  # 11 rows: one full 8-row tile and one of 3 per expert
    sets, nbytes = stream.argument_sets(isa, experts, rows, 64, 32, copies=2)
    a, panels, scales, comp, bias, tiles, out = sets[1]
    fn(*sets[1])
    rng = np.random.default_rng(0)  # the script's weights, drawn again
    weight = (rng.standard_normal((experts, 64, 32)) * 0.05).astype(np.float32)
    a, tiles, out = a.numpy(), tiles.numpy(), out.numpy()
    assert nbytes == experts * 64 * 32  # one int8 byte per weight
    assert tiles.tolist() == [[e, n] for e in range(experts) for n in (8, 3)]
    for t, (expert, filled) in enumerate(tiles):
        got, want = out[t * 8:t * 8 + filled], a[t * 8:t * 8 + filled] @ weight[expert]
        # int8 weights and u8 rows each round to 1/2 of a step of 1/127 of their range
        np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max() + 1e-3)
