"""The fallback rule's reduction over a middle axis with a static last axis (compile/cpu/rules.py):
expert choice's token rank sums (G, n, n, E) over the middle axis. Scheduled by our rule, not
left as loops, and equal to numpy at two symbolic sizes."""

from __future__ import annotations

import logging

import numpy as np
import pytest

LAST = 32  # two AVX-512 vectors


def _module():
    from tvm.script import ir as I, relax as R

    @I.ir_module
    class Module:
        @R.function
        def main(a: R.Tensor(("g", "n", LAST), "float32"), b: R.Tensor(("g", "n", LAST), "float32")):
            with R.dataflow():
                # pairwise "b[t'] > a[t]" counted over t': a (g, n, 1, E) against b (g, 1, n, E)
                beats = R.astype(R.greater(R.expand_dims(b, axis=[1]), R.expand_dims(a, axis=[2])), "float32")
                counts = R.sum(beats, axis=[2])  # (g, n, E)
                R.output(counts)
            return counts

    return Module


def test_scheduled_by_the_lanes_outside_reduction_path(caplog):
    import tvm

    from forgeline.compile.cpu.pipeline import apply_cpu_defaults, unscheduled_kernels

    target = tvm.target.Target({"kind": "llvm", "mcpu": "znver4", "num-cores": 2})
    with caplog.at_level(logging.WARNING, logger="forgeline.compile.cpu"):
        scheduled = apply_cpu_defaults(_module(), target)
    assert unscheduled_kernels(scheduled) == []
    assert not [r for r in caplog.records if "schedule failed" in r.getMessage()]
    text = "\n".join(f.script() for f in scheduled.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    assert "T.vectorized(T.int64(16))" in text  # the partial counts' init runs in lanes


@pytest.mark.parametrize("groups,n", [(1, 5), (3, 17)])
def test_matches_numpy(groups, n):
    import tvm
    from tvm import relax

    from forgeline.compile.cpu.pipeline import cpu_pipeline

    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    vm = relax.VirtualMachine(tvm.compile(_module(), target=target, relax_pipeline=cpu_pipeline(target)), tvm.cpu())
    rng = np.random.default_rng(n)
    a = rng.integers(0, 4, (groups, n, LAST)).astype(np.float32)  # small integers: ties too
    b = rng.integers(0, 4, (groups, n, LAST)).astype(np.float32)
    want = (b[:, None, :, :] > a[:, :, None, :]).sum(2).astype(np.float32)
    got = vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy()
    np.testing.assert_array_equal(got, want)
