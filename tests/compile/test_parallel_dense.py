"""Sibling dense layers combined into one (compile/parallel_dense.py): the graph it leaves, and the
CPU build's outputs against numpy by hand."""

from __future__ import annotations

import numpy as np
import pytest

from forgeline.runtime.format import PRECISION_TOLERANCE

K, D = 24, 4  # model width, head dim
WIDTHS = {"q": 16, "k": 8, "v": 8, "router": 3, "ffn": 12, "plain": 5}  # GQA: k and v narrower


def _weights():
    rng = np.random.default_rng(3)
    w = {n: rng.standard_normal((K, width)).astype(np.float32) for n, width in WIDTHS.items()}
    b = {n: rng.standard_normal(width).astype(np.float32) for n, width in WIDTHS.items() if n != "plain"}
    return w, b


def _module(w, b):
    """q, k, v (biased, head-split), a router (softmax), an FFN layer (GELU) and a bias-free dense,
    all on one activation ``x (batch, seq, K)``."""
    from tvm import relax, tirx

    batch, seq = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    x = relax.Var("x", relax.TensorType([batch, seq, K], "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            out = {}
            for name in WIDTHS:
                y = builder.emit(relax.op.matmul(x, relax.const(w[name])))
                out[name] = builder.emit(relax.op.add(y, relax.const(b[name]))) if name in b else y
            heads = [builder.emit(relax.op.reshape(out[n], (batch, seq, WIDTHS[n] // D, D))) for n in "qkv"]
            split = [builder.emit(relax.op.permute_dims(h, [0, 2, 1, 3])) for h in heads]
            result = builder.emit_output(relax.Tuple([
                *split, relax.op.nn.softmax(out["router"]), relax.op.nn.gelu(out["ffn"]), out["plain"]]))
        builder.emit_func_output(result)
    return builder.get()


def _matmul_weights(mod) -> list[tuple[int, int]]:
    import tvm
    from tvm import relax

    found = []
    op = tvm.ir.Op.get("relax.matmul")

    def visit(node):
        if isinstance(node, relax.Call) and node.op.same_as(op):
            found.append(tuple(int(v) for v in node.args[1].ty.shape.values))

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return sorted(found)


def test_siblings_become_one_matmul_and_routers_and_ffns_stay_alone():
    from forgeline.compile.parallel_dense import combine_parallel_dense

    w, b = _weights()
    combined = combine_parallel_dense(_module(w, b))
    # q, k, v and the bias-free dense share one (K, 16 + 8 + 8 + 5) weight; router and FFN alone
    assert _matmul_weights(combined) == [(K, 3), (K, 12), (K, 37)]
    assert _matmul_weights(combine_parallel_dense(combined)) == [(K, 3), (K, 12), (K, 37)]  # idempotent


@pytest.mark.parametrize("precision", ["fp32", "int8-vnni-emulated"])
def test_combined_build_matches_numpy(precision):
    import tvm
    from tvm import relax

    from forgeline.compile.cpu.pipeline import cpu_pipeline

    w, b = _weights()
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    vm = relax.VirtualMachine(tvm.compile(_module(w, b), target=target,
                                          relax_pipeline=cpu_pipeline(target, precision=precision)), tvm.cpu())
    x = np.random.default_rng(4).standard_normal((2, 5, K)).astype(np.float32)
    got = [t.numpy() for t in vm["main"](tvm.runtime.tensor(x))]
    x64 = x.astype(np.float64)
    dense = {n: x64 @ w[n] + b.get(n, 0) for n in WIDTHS}
    router = np.exp(dense["router"] - dense["router"].max(-1, keepdims=True))
    ffn = dense["ffn"]
    from math import erf

    want = [dense[n].reshape(2, 5, -1, D).transpose(0, 2, 1, 3) for n in "qkv"] + [
        router / router.sum(-1, keepdims=True),
        0.5 * ffn * (1 + np.vectorize(erf)(ffn / np.sqrt(2))), dense["plain"]]
    tol = PRECISION_TOLERANCE["fp32" if precision == "fp32" else "int8"]
    for g, wnt in zip(got, want):
        assert g.shape == wnt.shape
        assert np.allclose(g, wnt, atol=tol.atol, rtol=tol.rtol)
