"""The reshape that returns a reduced-precision dense layer's output is a view, not a copy kernel
(compile/cpu/output_views.py), and the output is still right."""

from __future__ import annotations

import numpy as np

from forgeline.runtime.format import PRECISION_TOLERANCE


def _head_module(w: np.ndarray):
    """``logits = x @ w`` for ``x (batch, seq, K)``: an LM head, bound to the function's output."""
    from tvm import relax, tirx

    batch, seq = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    x = relax.Var("x", relax.TensorType([batch, seq, w.shape[0]], "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(relax.op.matmul(x, relax.const(w)))
        builder.emit_func_output(out)
    return builder.get()


def _reshape_kernel_calls(mod) -> int:
    import tvm
    from tvm import relax

    calls = 0

    def visit(node):
        nonlocal calls
        if (isinstance(node, relax.Call) and getattr(node.op, "name", "") == "relax.call_tir"
                and len(node.args[1].fields) == 1):  # a reshape kernel has one input
            func = mod[node.args[0]]
            calls += isinstance(func, tvm.tirx.PrimFunc) and relax.analysis.has_reshape_pattern(func)

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return calls


def test_output_reshape_becomes_a_view_and_the_logits_stay_right():
    import tvm
    from tvm import relax

    from forgeline.compile.cpu.output_views import view_output_reshapes
    from forgeline.compile.cpu.pipeline import apply_cpu_defaults, cpu_pipeline

    w = np.random.default_rng(5).standard_normal((24, 40)).astype(np.float32)
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    precision = "int8-vnni-emulated"  # its dense kernel writes (rows, N): a reshape restores (b, s, N)
    legalized = apply_cpu_defaults(_head_module(w), target, precision=precision)
    lower = relax.transform.RewriteDataflowReshape()  # the CPU pipeline's pass that makes views
    assert _reshape_kernel_calls(lower(legalized)) == 1  # TVM alone keeps the output's copy
    assert _reshape_kernel_calls(lower(view_output_reshapes(legalized))) == 0

    vm = relax.VirtualMachine(tvm.compile(_head_module(w), target=target,
                                          relax_pipeline=cpu_pipeline(target, precision=precision)), tvm.cpu())
    x = np.random.default_rng(6).standard_normal((2, 3, 24)).astype(np.float32)
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    tol = PRECISION_TOLERANCE["int8"]
    assert got.shape == (2, 3, 40)
    assert np.allclose(got, x.astype(np.float64) @ w, atol=tol.atol, rtol=tol.rtol)
