"""`forgeline.build` on an nn.Module the project has never seen: eager PyTorch is the reference.

torch's own TransformerEncoder with a pooling head, two outputs, a keyword input, dynamic batch and
sequence. The artifact must match eager at shapes other than the example's (computed here by the
module itself), `check` must say it compares with the stored golden outputs, and the artifact runs,
signs and verifies like any other. A module whose export fails writes nothing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.export import Dim

import forgeline
from forgeline.cli.app import main
from forgeline.runtime import load
from forgeline.runtime.format import DEFAULT_TOLERANCE

D_MODEL = 16


class PooledEncoder(torch.nn.Module):
    """nn.TransformerEncoder, mean-pooled into a 3-way head; ``shift`` is added before encoding."""

    def __init__(self):
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(D_MODEL, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(D_MODEL, 3)

    def forward(self, x: torch.Tensor, shift: torch.Tensor | None = None):
        h = self.encoder(x + shift)  # (B, T, D); shift (B, 1, D)
        return h, self.head(h.mean(dim=1))  # (B, T, D), (B, 3)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    torch.manual_seed(0)
    module = PooledEncoder().eval()
    out = tmp_path_factory.mktemp("own") / "encoder"
    batch, seq = Dim("batch", max=64), Dim("seq", max=128)
    report = forgeline.build(module, out, example_inputs=(torch.randn(2, 8, D_MODEL),),
                             example_kwargs={"shift": torch.randn(2, 1, D_MODEL)},
                             dynamic_shapes={"x": {0: batch, 1: seq}, "shift": {0: batch}},
                             output_names=["hidden", "logits"])
    return module, out, report


def test_it_builds_and_matches_eager_at_new_shapes(encoder):
    module, out, report = encoder
    assert report.passed and report.reference == "eager PyTorch at build time"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "module"
    assert [(s["name"], s["dims"]) for s in manifest["inputs"]] == [("x", ["batch", "seq", D_MODEL]),
                                                                   ("shift", ["batch", 1, D_MODEL])]
    assert [(s["name"], s["dims"]) for s in manifest["outputs"]] == [("hidden", ["batch", "seq", D_MODEL]),
                                                                    ("logits", ["batch", 3])]
    assert {(c["batch"], c["seq"]) for c in manifest["golden_cases"]} - {(2, 8)}  # shapes besides the example's
    # Each layer's packed QKV projection and its two FFN matmuls are dense layers the CPU rewrites take.
    (build,) = manifest["builds"].values()
    assert build["dense_layers"].count(f"{D_MODEL}x{3 * D_MODEL}") == 2 and build["dense_layers"].count("16x32") == 2
    tol = DEFAULT_TOLERANCE
    with load(out, backend="tvm") as model:
        for batch, seq in ((1, 5), (4, 19)):  # neither the example's nor a golden case's shape
            gen = torch.Generator().manual_seed(seq)
            x, shift = torch.randn(batch, seq, D_MODEL, generator=gen), torch.randn(batch, 1, D_MODEL, generator=gen)
            with torch.no_grad():
                hidden, logits = module(x, shift=shift)
            got = model.run(x=x.numpy(), shift=shift.numpy())
            np.testing.assert_allclose(got["hidden"], hidden.numpy(), atol=tol.atol, rtol=tol.rtol)
            np.testing.assert_allclose(got["logits"], logits.numpy(), atol=tol.atol, rtol=tol.rtol)


def test_check_says_it_compares_with_the_stored_outputs_and_signing_works(encoder, tmp_path, capsys):
    _, out, _ = encoder
    assert main(["-q", "check", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "stage vs eager PyTorch at build time" in printed and "stored in golden.npz" in printed
    assert "tvm/cpu" in printed
    key = tmp_path / "key"
    assert main(["keygen", str(key)]) == 0
    signed = tmp_path / "signed"
    import shutil

    shutil.copytree(out, signed)
    assert main(["sign", str(signed), "--key", str(key)]) == 0
    assert main(["-q", "check", str(signed), "--verify-key", f"{key}.pub"]) == 0


class Branchy(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
            return x * 2
        return x - 1


def test_a_module_whose_export_fails_ends_in_one_sentence_and_writes_nothing(tmp_path):
    out = tmp_path / "branchy"
    with pytest.raises(forgeline.ForgelineError) as caught:
        forgeline.build(Branchy(), out, example_inputs=(torch.randn(2, 3),))
    message = str(caught.value)
    assert "Branchy" in message and "data-dependent" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []  # no artifact, no staging folder left behind
