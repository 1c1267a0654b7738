"""compile/cpu/shape_defs.py: a match_cast that fusion left after a use of its shape moves before it."""

from __future__ import annotations

import pytest


def test_a_shape_definition_moves_before_its_first_use():
    pytest.importorskip("tvm")
    from tvm import relax, tirx

    from forgeline.compile.cpu.shape_defs import hoist_shape_definitions

    rows = tirx.Var("moe_rows1", "int64")
    sizes = relax.Var("sizes", relax.TensorType([2], "int64"))
    x = relax.Var("x", relax.TensorType([4, 8], "float32"))
    # the order FuseOps left: the use of moe_rows1, then the chain that defines it
    use = relax.DataflowVar("use", relax.TensorType([rows, 8], "float32"))
    shape = relax.DataflowVar("shape", relax.ShapeType(ndim=1))
    cast = relax.DataflowVar("cast", relax.ShapeType([rows]))
    other = relax.DataflowVar("other", relax.TensorType([4, 8], "float32"))
    sliced = relax.op.strided_slice(sizes, [0], [0], [1])
    bindings = [relax.VarBinding(other, relax.op.add(x, x)),
                relax.VarBinding(use, relax.op.zeros(relax.ShapeExpr([rows, 8]), "float32")),
                relax.VarBinding(shape, relax.op.tensor_to_shape(sliced)),
                relax.MatchCast(cast, shape, relax.ShapeType([rows]))]
    out = relax.Var("out", relax.TensorType([rows, 8], "float32"))
    block = relax.DataflowBlock(bindings + [relax.VarBinding(out, use)])
    func = relax.Function([x, sizes], relax.SeqExpr([block], out), relax.TensorType(ndim=2, dtype="float32"), is_pure=True)
    mod = hoist_shape_definitions(tvm_module(func))
    order = [b.var.name for b in mod["main"].body.blocks[0].bindings]
    assert order == ["other", "shape", "cast", "use", "out"]


def tvm_module(func):
    import tvm

    return tvm.IRModule({"main": func})
