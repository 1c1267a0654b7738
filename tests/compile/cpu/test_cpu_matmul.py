"""The default GEMM schedule (compile/cpu/matmul.py) and weight packing, checked against numpy.

Each module embeds its weights as Relax constants, as the ONNX importer does, so the weight
packing path runs; sizes are chosen so that rows and columns are not whole tiles.
"""

from __future__ import annotations

import numpy as np
import pytest

RNG = np.random.default_rng(7)
W_DENSE = RNG.standard_normal((24, 40)).astype(np.float32)  # (K, N): N not a multiple of 32
BIAS = RNG.standard_normal(40).astype(np.float32)
W_TIED = RNG.standard_normal((48, 24)).astype(np.float32)  # (N, K), used as x @ W.T
W_EXPERTS = RNG.standard_normal((3, 24, 16)).astype(np.float32)  # (E, K, N) stacked experts


def _gelu(y):
    from math import erf, sqrt

    return y * 0.5 * (1 + np.vectorize(lambda v: erf(v / sqrt(2)))(y))


@pytest.fixture(scope="module", params=[None, 1], ids=["default-tile", "decode-rows"])
def built(request):
    """One symbolic-shape module: dense+bias+GELU, a tied (transposed) head, MoE experts; with
    the default register tile and with the one-row tile that decode graphs use."""
    import tvm
    from tvm import relax
    from tvm.script import ir as I, relax as R

    from forgeline.compile.cpu.pipeline import apply_cpu_defaults, cpu_pipeline

    @I.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor(("b", "t", 24), "float32"), g: R.Tensor(("t", 3, "b", 24), "float32"),
                 w: R.Tensor((24, 40), "float32"), bias: R.Tensor((40,), "float32"),
                 tied: R.Tensor((48, 24), "float32"), experts: R.Tensor((3, 24, 16), "float32")):
            with R.dataflow():
                dense = R.nn.gelu(R.add(R.matmul(x, w), bias))
                head = R.matmul(x, R.permute_dims(tied, [1, 0]))
                moe = R.matmul(g, experts)  # (G, E, n, K) @ (E, K, N)
                out = (dense, head, moe)
                R.output(out)
            return out

    weights = {"w": W_DENSE, "bias": BIAS, "tied": W_TIED, "experts": W_EXPERTS}
    module = relax.transform.BindParams(  # weights become embedded constants, as on import
        "main", {k: tvm.runtime.tensor(v) for k, v in weights.items()})(Module)
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    scheduled = apply_cpu_defaults(module, target, gemm_rows=request.param)
    pipeline = cpu_pipeline(target, gemm_rows=request.param)
    executable = tvm.compile(module, target=target, relax_pipeline=pipeline)
    return relax.VirtualMachine(executable, tvm.cpu()), scheduled


@pytest.mark.parametrize("batch,seq", [(1, 5), (2, 13)])
def test_gemm_schedule_matches_numpy(built, batch, seq):
    import tvm

    vm, _ = built
    x = RNG.standard_normal((batch, seq, 24)).astype(np.float32)
    g = RNG.standard_normal((seq, 3, batch, 24)).astype(np.float32)
    dense, head, experts = (t.numpy() for t in vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(g)))
    np.testing.assert_allclose(dense, _gelu(x @ W_DENSE + BIAS), atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(head, x @ W_TIED.T, atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(experts, np.einsum("genk,ekf->genf", g, W_EXPERTS), atol=1e-4, rtol=1e-3)


def test_constant_weights_are_packed_at_build_time(built):
    import tvm

    _, scheduled = built
    names = [gv.name_hint for gv, f in scheduled.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    packed = [n for n in names if n.endswith("_prepacked")]
    assert len(packed) == 3, names  # dense, tied head and experts all read packed constants
    assert not [n for n in names if n.endswith("_weight_prepack")]  # folded away, not run per call
    assert all(f.attrs.get("tirx.is_scheduled") for f in scheduled.functions.values()
               if isinstance(f, tvm.tirx.PrimFunc))
