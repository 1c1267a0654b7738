"""Compound symbolic row counts get a name of their own (compile/symbolic_rows.py).

MoE's expert GEMM has ``batch * ((seq + 1) // 2)`` rows; with that expression as M the scheduled
kernel's row guard could not be simplified and its GELU epilogue ran about 3x slower.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

E, K, N = 4, 8, 32


def _module():
    from tvm.script import ir as I, relax as R, tirx as T

    @I.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor((E, "b * ((s + 1) // 2)", K), "float32"), shape_of: R.Tensor(("b", "s"), "float32"),
                 w: R.Tensor((E, K, N), "float32")):
            b, s = T.int64(), T.int64()
            with R.dataflow():
                h = R.nn.gelu(R.matmul(x, w))  # (E, b * ceil(s / 2), N)
                y = R.reshape(h, R.shape([E, b, (s + 1) // 2, N]))
                R.output(y)
            return y

    return Module


def _matmul_kernels(mod):
    import tvm

    return [f for g, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc) and "matmul" in g.name_hint]


def test_the_matmul_reads_a_match_cast_to_a_fresh_row_count():
    from forgeline.compile.symbolic_rows import name_compound_rows

    text = name_compound_rows(_module()).script()
    assert "R.match_cast" in text and "rows0" in text


def test_the_scheduled_kernel_has_a_plain_row_count():
    import tvm

    from forgeline.compile.cpu.pipeline import apply_cpu_defaults

    target = tvm.target.Target({"kind": "llvm", "mcpu": "znver4", "num-cores": 2})
    (kernel,) = _matmul_kernels(apply_cpu_defaults(_module(), target))
    assert "(s + " not in kernel.script()  # no compound expression left in the kernel


@pytest.mark.parametrize("batch,seq", [(1, 7), (3, 4)])
def test_matches_numpy(batch, seq):
    import tvm
    from tvm import relax

    from forgeline.compile.cpu.pipeline import cpu_pipeline

    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    vm = relax.VirtualMachine(tvm.compile(_module(), target=target, relax_pipeline=cpu_pipeline(target)), tvm.cpu())
    rng = np.random.default_rng(batch)
    rows = batch * ((seq + 1) // 2)
    x = rng.standard_normal((E, rows, K)).astype(np.float32)
    w = rng.standard_normal((E, K, N)).astype(np.float32)
    got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(np.zeros((batch, seq), np.float32)),
                     tvm.runtime.tensor(w)).numpy()
    h = x.astype(np.float64) @ w
    want = (0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))).reshape(E, batch, (seq + 1) // 2, N)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
