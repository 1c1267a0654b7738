"""CPU defaults: GEMM-scheduled (or BLAS-offloaded) matmuls and scheduled kernels, vs numpy."""

from __future__ import annotations


import numpy as np
import pytest

from forgeline.runtime.backends.cpu_kernels import matmul_into



def test_matmul_into_folds_broadcast_batches_exactly_like_einsum():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 2, 4)).astype(np.float32)  # (G, E, n, K) MoE experts' input
    w = rng.standard_normal((3, 4, 6)).astype(np.float32)  # (E, K, N) stacked expert weights
    out = np.empty((5, 3, 2, 6), np.float32)
    matmul_into(x, w, out)
    np.testing.assert_allclose(out, np.einsum("genk,ekf->genf", x, w), rtol=1e-5, atol=1e-5)
    a, b = x[0, 0], w[0]  # plain 2-D
    out2 = np.empty((2, 6), np.float32)
    matmul_into(a, b, out2)
    np.testing.assert_allclose(out2, np.einsum("nk,kf->nf", a, b), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module", params=[False, True], ids=["gemm-schedule", "blas"])
def compiled_block(request):
    """A symbolic-shape Relax block (matmul + bias, softmax, layer norm, batched matmul)."""
    import tvm
    from tvm import relax
    from tvm.script import ir as I, relax as R

    from forgeline.compile.cpu.pipeline import cpu_pipeline
    from forgeline.runtime.backends.cpu_kernels import register_cpu_kernels

    @I.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor(("b", "t", 8), "float32"), w: R.Tensor((8, 8), "float32"),
                 bias: R.Tensor((8,), "float32")):
            with R.dataflow():
                h = R.add(R.matmul(x, w), bias)  # (b, t, 8)
                g = R.nn.layer_norm(h, R.ones((8,), "float32"), R.zeros((8,), "float32"), [-1])
                s = R.nn.softmax(R.matmul(g, R.permute_dims(g, [0, 2, 1])), axis=-1)  # (b,t,t)
                y = R.matmul(s, g)  # (b, t, 8)
                out = R.nn.gelu(y)
                R.output(out)
            return out

    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    register_cpu_kernels()
    pipeline = cpu_pipeline(target, offload_matmul=request.param)
    executable = tvm.compile(Module, target=target, relax_pipeline=pipeline)
    return relax.VirtualMachine(executable, tvm.cpu()), request.param


def _reference(x, w, bias):
    h = x @ w + bias
    g = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
    scores = g @ g.transpose(0, 2, 1)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    y = (e / e.sum(-1, keepdims=True)) @ g
    from math import erf, sqrt

    return y * 0.5 * (1 + np.vectorize(lambda v: erf(v / sqrt(2)))(y))


@pytest.mark.parametrize("shape", [(1, 5), (3, 17)])
def test_symbolic_build_matches_numpy_at_two_shapes(compiled_block, shape):
    import tvm

    vm, offloaded = compiled_block
    called: list[str] = []

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run:
            called.append(str(symbol))
        return 0  # run the call as usual

    vm.set_instrument(instrument)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((*shape, 8)).astype(np.float32)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    got = vm["main"](*(tvm.runtime.tensor(a) for a in (x, w, bias))).numpy()
    np.testing.assert_allclose(got, _reference(x, w, bias), atol=1e-4, rtol=1e-3)
    # The BLAS variant really hands its matmuls to the packed function; the GEMM schedule never does.
    assert called.count("forgeline.cpu.matmul") == (3 if offloaded else 0), called


@pytest.mark.parametrize("offload", [False, True])
def test_apply_cpu_defaults_schedules_every_kernel(offload):
    import tvm
    from tvm.script import ir as I, relax as R

    from forgeline.compile.cpu.pipeline import apply_cpu_defaults

    @I.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor(("n", 16), "float32"), w: R.Tensor((16, 4), "float32")):
            with R.dataflow():
                y = R.nn.softmax(R.matmul(x, w), axis=-1)
                R.output(y)
            return y

    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    mod = apply_cpu_defaults(Module, target, offload_matmul=offload)
    assert ('R.call_dps_packed("forgeline.cpu.matmul"' in mod.script()) == offload
    prim_funcs = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert prim_funcs and all(f.attrs and f.attrs.get("tirx.is_scheduled") for f in prim_funcs)

def test_unscheduled_kernels_are_found_and_every_model_kernel_is_scheduled(tiny_artifact):
    import tvm
    from tvm.script import ir as I, relax as R

    from forgeline.compile.cpu.pipeline import apply_cpu_defaults, unscheduled_kernels
    from forgeline.runtime.format import Manifest

    @I.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor(("n", 16), "float32")):
            with R.dataflow():
                y = R.nn.softmax(x, axis=-1)
                R.output(y)
            return y

    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    with target:
        legalized = tvm.relax.transform.LegalizeOps()(Module)  # PrimFuncs, but no schedule yet
    assert unscheduled_kernels(legalized) == ["softmax"]
    assert unscheduled_kernels(apply_cpu_defaults(Module, target)) == []
    manifest = Manifest.load(tiny_artifact("gpt"))
    assert [b.unscheduled for b in manifest.builds.values()] == [[]]  # recorded, and empty
