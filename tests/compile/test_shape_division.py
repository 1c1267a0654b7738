"""Truncating shape divisions from the ONNX importer become floor divisions (compile/shape_division.py).

The importer writes ``T.Div(seq + 15, 16)`` where its own shape inference writes
``(seq + 15) // 16``; a reshape between the two spellings stayed a copy kernel. After the rewrite
the same reshape becomes a view, and it still computes what numpy's reshape does.
"""

from __future__ import annotations

import numpy as np
import pytest


def _module(truncating: bool):
    """f(x (batch, seq, 4, ceil(seq / 16))) = reshape(x, (batch, seq, 4 * ceil(seq / 16))) + 1, MoE's
    combine reshape, with the slot count written as the importer writes it (``T.Div``) or as
    shape inference does (``//``)."""
    from tvm import relax, tirx

    batch, seq = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    slots = tirx.floordiv(seq + 15, 16)
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([batch, seq, 4, slots], "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            written = tirx.Div(seq + 15, tirx.IntImm("int64", 16)) if truncating else slots
            merged = builder.emit(relax.op.reshape(x, [batch, seq, 4 * written]))
            out = builder.emit_output(relax.op.add(merged, relax.const(1.0, "float32")))
        builder.emit_func_output(out)
    return builder.get()


def _reshape_is_a_view(mod) -> bool:
    """Whether the legalized reshape becomes a view (TVM's RewriteDataflowReshape proves the
    kernel only re-indexes) rather than a copy kernel of its own."""
    import tvm
    from tvm import relax

    passes = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
              relax.transform.RewriteDataflowReshape()]
    script = tvm.transform.Sequential(passes)(mod)["main"].script(show_meta=False)
    assert "R.call_tir(add" in script  # the consumer is still there: the check looks at the right thing
    return "R.call_tir(reshape" not in script


def test_truncating_division_kept_the_reshape_a_copy():
    """The control: without the rewrite, TVM cannot tell the reshape is a view."""
    assert not _reshape_is_a_view(_module(truncating=True))
    assert _reshape_is_a_view(_module(truncating=False))


def test_rewritten_reshape_is_a_view():
    from forgeline.compile.shape_division import floor_shape_divisions

    rewritten = floor_shape_divisions(_module(truncating=True))
    assert "T.Div" not in rewritten["main"].script(show_meta=False)
    assert _reshape_is_a_view(rewritten)


@pytest.mark.parametrize("seq", [1, 16, 17, 40])
def test_rewritten_reshape_computes_numpys_reshape(seq):
    import tvm
    from tvm import relax

    from forgeline.compile.shape_division import floor_shape_divisions

    executable = tvm.compile(floor_shape_divisions(_module(truncating=True)), target="llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    slots = -(-seq // 16)
    x = np.random.default_rng(seq).standard_normal((2, seq, 4, slots)).astype(np.float32)
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), x.reshape(2, seq, 4 * slots) + 1)
