"""The scalar-Reshape rewrite (compile/onnx_fixups.py) on a graph the dynamo exporter really writes.

MoE's combine re-lays its expert outputs ``(E, G*s, D) -> (G, E*s, D)``. The exporter computes
that ``-1`` with scalar Mul/Div nodes and a ``Reshape(scalar, [-1])``, which TVM's importer
rejects; after the rewrite it imports, and the compiled graph matches eager PyTorch.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

EXPERTS, WIDTH = 4, 8


class Relayout(torch.nn.Module):
    def forward(self, token: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """token (G, E, s) int64, x (N, D) -> the gathered rows re-laid as (G, E*s, D), doubled."""
        G, E, s = token.shape
        y = x[token.transpose(0, 1).reshape(E, -1)] * 2  # (E, G*s, D)
        y = y.view(E, G, s, WIDTH).transpose(0, 1)  # (G, E, s, D)
        return y.reshape(G, E * s, WIDTH)  # (G, E*s, D)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("relayout") / "model.onnx"
    token = torch.zeros(3, EXPERTS, 5, dtype=torch.int64)
    x = torch.zeros(11, WIDTH)
    dims = ({0: torch.export.Dim("G"), 2: torch.export.Dim("s")}, {0: torch.export.Dim("N")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Relayout(), (token, x), str(path), dynamo=True, dynamic_shapes=dims, verbose=False)
    return path


def test_the_importer_rejects_the_raw_graph(exported):
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    with pytest.raises(Exception, match="Reshape expects the input data to be a Tensor"):
        from_onnx(onnx.load(str(exported)), keep_params_in_input=False)


def test_rewritten_graph_compiles_and_matches_eager(exported):
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from forgeline.compile.onnx_fixups import normalize_for_import

    model = onnx.load(str(exported))
    assert normalize_for_import(model) >= 1
    assert normalize_for_import(model) == 0  # nothing left to rewrite
    onnx.checker.check_model(model)
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    # TVM's default pipeline: this lone gather + re-layout trips FuseTIR in the CPU one, which
    # compiles the same pattern inside the MoE models (tests/e2e/test_parity_families.py).
    executable = tvm.compile(from_onnx(model, keep_params_in_input=False), target=target)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    rng = np.random.default_rng(0)
    for groups, slots, rows in [(2, 3, 7), (5, 1, 20)]:
        token = rng.integers(0, rows, (groups, EXPERTS, slots)).astype(np.int64)
        x = rng.standard_normal((rows, WIDTH)).astype(np.float32)
        want = Relayout()(torch.from_numpy(token), torch.from_numpy(x)).numpy()
        got = vm["main"](tvm.runtime.tensor(token), tvm.runtime.tensor(x)).numpy()
        np.testing.assert_array_equal(got, want)
