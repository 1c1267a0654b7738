"""Kernels with bool stages compile on AVX-512 and compute what numpy computes.

Token choice ranks experts with ``(s' > s) | ((s' == s) & earlier)`` (define/moe.py), where
``earlier`` is a constant bool matrix. With 16 experts its last axis is one AVX-512 vector, and
vectorizing the bool stages made TVM emit LLVM IR that fails verification
(``and <16 x i8>, <16 x i1>``): gpt-moe-tc with 16 experts did not compile.
"""

from __future__ import annotations

import numpy as np
import pytest

EXPERTS = 16  # one fp32 AVX-512 vector


def _rank_module():
    import tvm
    from tvm import relax
    from tvm.script import ir as I, relax as R

    @I.ir_module
    class Module:
        @R.function
        def main(s: R.Tensor(("g", "n", EXPERTS), "float32"), earlier: R.Tensor((EXPERTS, EXPERTS), "bool")):
            with R.dataflow():
                s_t = R.expand_dims(s, axis=[-1])  # (g, n, E, 1)
                s_other = R.expand_dims(s, axis=[-2])  # (g, n, 1, E)
                ties = R.logical_and(R.equal(s_other, s_t), earlier)
                beats = R.logical_or(R.greater(s_other, s_t), ties)  # (g, n, E, E)
                rank = R.sum(R.astype(beats, "float32"), axis=[-1])  # (g, n, E)
                R.output(rank)
            return rank

    index = np.arange(EXPERTS)
    earlier = index[None, :] < index[:, None]  # [t, t'] = t' < t
    bound = relax.transform.BindParams("main", {"earlier": tvm.runtime.tensor(earlier)})(Module)
    return bound, earlier


def _numpy_rank(s, earlier):
    s_t, s_other = s[..., :, None], s[..., None, :]
    return ((s_other > s_t) | ((s_other == s_t) & earlier)).sum(-1).astype(np.float32)


@pytest.mark.parametrize("mcpu", ["skylake-avx512", "znver4"])
def test_bool_stages_compile_for_avx512(mcpu, caplog):
    import logging

    import tvm

    from forgeline.compile.cpu.pipeline import apply_cpu_defaults, cpu_pipeline, unscheduled_kernels

    module, _ = _rank_module()
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    with caplog.at_level(logging.WARNING, logger="forgeline.compile.cpu"):
        assert unscheduled_kernels(apply_cpu_defaults(module, target)) == []  # scheduled, not left as loops
    assert not [r for r in caplog.records if "schedule failed" in r.getMessage()]  # by our rules, which took it
    tvm.compile(module, target=target, relax_pipeline=cpu_pipeline(target))  # raised before the fix


def test_bool_stages_match_numpy_on_the_host():
    import tvm
    from tvm import relax

    from forgeline.compile.cpu.pipeline import cpu_pipeline

    module, earlier = _rank_module()
    host = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    vm = relax.VirtualMachine(tvm.compile(module, target=host, relax_pipeline=cpu_pipeline(host)), tvm.cpu())
    rng = np.random.default_rng(5)
    s = rng.integers(0, 4, (3, 5, EXPERTS)).astype(np.float32)  # small integers: many ties
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(s)).numpy(), _numpy_rank(s, earlier))
