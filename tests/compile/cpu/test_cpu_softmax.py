"""The lane softmax kernel (compile/cpu/softmax.py) inside attention, checked against numpy's
softmax(QKᵀ/√d + mask)·V at symbolic batch and sequence sizes, with causal and padding masks."""

from __future__ import annotations

import numpy as np
import pytest

RNG = np.random.default_rng(5)
LOWEST = np.finfo(np.float32).min  # what the exported BERT mask adds at padded keys


@pytest.fixture(scope="module")
def built():
    import tvm
    from tvm import relax
    from tvm.script import ir as I, relax as R

    from forgeline.compile.cpu.pipeline import apply_cpu_defaults, cpu_pipeline

    @I.ir_module
    class Module:
        @R.function
        def main(q: R.Tensor(("b", 2, "t", 8), "float32"), k: R.Tensor(("b", 2, "t", 8), "float32"),
                 v: R.Tensor(("b", 2, "t", 8), "float32"), mask: R.Tensor(("b", 1, "t", "t"), "float32")):
            with R.dataflow():
                scores = R.add(R.multiply(R.matmul(q, R.permute_dims(k, [0, 1, 3, 2])),
                                          R.const(8 ** -0.5, "float32")), mask)
                out = R.matmul(R.nn.softmax(scores, axis=-1), v)  # (b, 2, t, 8)
                R.output(out)
            return out

    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    scheduled = apply_cpu_defaults(Module, target)
    executable = tvm.compile(Module, target=target, relax_pipeline=cpu_pipeline(target))
    return scheduled, relax.VirtualMachine(executable, tvm.cpu())


def _attention(q, k, v, mask):
    scores = q.astype(np.float64) @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1]) + mask
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)) @ v


def _masks(batch, seq, kind):
    if kind == "causal":
        causal = np.triu(np.full((seq, seq), LOWEST, np.float32), 1)
        return np.broadcast_to(causal, (batch, 1, seq, seq)).copy()
    lengths = RNG.integers(1, seq + 1, batch)  # at least one real key per row
    keep = np.arange(seq)[None, :] < lengths[:, None]
    return np.where(keep, 0, LOWEST).astype(np.float32)[:, None, None, :].repeat(seq, 2)


@pytest.mark.parametrize("batch,seq", [(1, 5), (2, 16), (3, 37)])
@pytest.mark.parametrize("kind", ["causal", "padding"])
def test_attention_softmax_matches_numpy(built, batch, seq, kind):
    import tvm

    _, vm = built
    q, k, v = (RNG.standard_normal((batch, 2, seq, 8)).astype(np.float32) * 2 for _ in range(3))
    mask = _masks(batch, seq, kind)
    out = vm["main"](*(tvm.runtime.tensor(a) for a in (q, k, v, mask))).numpy()
    np.testing.assert_allclose(out, _attention(q, k, v, mask), atol=1e-4, rtol=1e-3)


def test_softmax_over_a_symbolic_axis_takes_the_lane_kernel(built):
    scheduled, _ = built
    names = [gv.name_hint for gv in scheduled.functions]
    assert "softmax_rows" in names and not any("softmax" in n and n != "softmax_rows" for n in names)


def test_kernel_matches_numpy_on_rows_of_every_tail_length():
    """Rows of 1..33 elements: the scalar tail alone, whole vectors alone, and both; large and
    equal scores, and a fully masked row (numpy: uniform)."""
    import tvm

    from forgeline.compile.cpu.softmax import softmax_rows_kernel

    lib = tvm.tirx.build(softmax_rows_kernel().with_attr("global_symbol", "main"),
                         target=tvm.target.Target({"kind": "llvm"}))
    for n in range(1, 34):
        x = (RNG.standard_normal((2, 1, 3, n)) * 30).astype(np.float32)
        x[1, 0, 0] = LOWEST
        x[1, 0, 1] = 7.0
        out = tvm.runtime.tensor(np.zeros_like(x))
        lib(tvm.runtime.tensor(x), out)
        want = np.exp(x - x.max(-1, keepdims=True))
        np.testing.assert_allclose(out.numpy(), want / want.sum(-1, keepdims=True), atol=1e-6, rtol=1e-5)


def test_kernel_writes_no_subnormals():
    """Scores 64..120 below the row's largest (a causal mask's e^-87 clamp divided by the row sum
    was subnormal): exact zeros instead, never a subnormal, which costs Intel a microcode assist
    per FMA in the PV matmul that follows."""
    import tvm

    from forgeline.compile.cpu.softmax import softmax_rows_kernel

    lib = tvm.tirx.build(softmax_rows_kernel().with_attr("global_symbol", "main"),
                         target=tvm.target.Target({"kind": "llvm"}))
    n = 37  # two whole vectors and a tail of 5
    x = np.zeros((1, 1, 4, n), np.float32)
    x[0, 0, 0, 1:] = LOWEST  # causal row 0: one key
    x[0, 0, 1, :] = -np.linspace(0, 120, n, dtype=np.float32)
    x[0, 0, 2, :] = -np.linspace(60, 100, n, dtype=np.float32)
    x[0, 0, 2, 0] = 0.0
    x[0, 0, 3, ::2] = LOWEST
    out = tvm.runtime.tensor(np.zeros_like(x))
    lib(tvm.runtime.tensor(x), out)
    y = out.numpy()
    tiny = np.finfo(np.float32).tiny
    assert np.all((y == 0) | (np.abs(y) >= tiny)), y[(y != 0) & (np.abs(y) < tiny)]
    want = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    np.testing.assert_allclose(y, want / want.sum(-1, keepdims=True), atol=1e-6, rtol=1e-5)


def test_static_attention_softmax_takes_the_lane_kernel():
    """A tuned bucket's static rows too: TOPI's fast_exp leaves subnormals above its clamp."""
    import tvm
    from tvm.script import ir as I, relax as R

    from forgeline.compile.cpu.softmax import lanes_softmax

    @I.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor((1, 4, 128, 128), "float32")):
            with R.dataflow():
                y = R.nn.softmax(x, axis=-1)
                R.output(y)
            return y

    names = [gv.name_hint for gv in lanes_softmax(Module).functions]
    assert "softmax_rows" in names
