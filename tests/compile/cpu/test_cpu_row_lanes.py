"""The layer-norm rule (compile/cpu/row_lanes.py): lane-wise partial sums, checked against numpy
at symbolic batch and sequence sizes, and the fallback for a hidden size it does not take."""

from __future__ import annotations

import numpy as np
import pytest

RNG = np.random.default_rng(11)


def _layer_norm(x, gamma, beta, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


@pytest.fixture(scope="module", params=[48, 40], ids=["whole-vectors", "not-whole-vectors"])
def built(request):
    import tvm
    from tvm import relax
    from tvm.script import ir as I, relax as R

    from forgeline.compile.cpu.pipeline import apply_cpu_defaults, cpu_pipeline

    d = request.param

    @I.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor(("b", "t", d), "float32"), r: R.Tensor(("b", "t", d), "float32"),
                 gamma: R.Tensor((d,), "float32"), beta: R.Tensor((d,), "float32")):
            with R.dataflow():
                y = R.nn.layer_norm(R.add(x, r), gamma, beta, axes=[-1], epsilon=1e-5)
                R.output(y)
            return y

    params = {"gamma": RNG.standard_normal(d).astype(np.float32),
              "beta": RNG.standard_normal(d).astype(np.float32)}
    module = relax.transform.BindParams(
        "main", {k: tvm.runtime.tensor(v) for k, v in params.items()})(Module)
    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
    scheduled = apply_cpu_defaults(module, target)
    host = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    executable = tvm.compile(module, target=host, relax_pipeline=cpu_pipeline(host))
    return d, params, scheduled, relax.VirtualMachine(executable, tvm.cpu())


@pytest.mark.parametrize("batch,seq", [(1, 5), (3, 17)])
def test_layer_norm_matches_numpy(built, batch, seq):
    import tvm

    d, params, _, vm = built
    x = (RNG.standard_normal((batch, seq, d)) * 3 + 2).astype(np.float32)  # mean far from 0
    r = RNG.standard_normal((batch, seq, d)).astype(np.float32)
    out = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(r)).numpy()
    want = _layer_norm((x + r).astype(np.float64), params["gamma"], params["beta"])
    np.testing.assert_allclose(out, want, atol=1e-4, rtol=1e-3)


def test_rule_takes_whole_vector_rows_only(built):
    """A 48-wide row (3 AVX-512 vectors) gets lane-wise partial sums; 40 is left to the next
    rule, which must still schedule it."""
    import tvm

    d, _, scheduled, _ = built
    norms = [f for gv, f in scheduled.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc) and "layer_norm" in gv.name_hint]
    assert norms and all(f.attrs.get("tirx.is_scheduled") for f in norms)
    assert any("_rf" in f.script() for f in norms) == (d % 16 == 0)
