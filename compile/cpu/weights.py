"""Weight packing for CPU matmuls: mark constant operands, then fold the packed copies.

The default GEMM schedule (matmul.py) re-lays a constant weight as contiguous column
panels inside the kernel, in a block marked as a layout-rewrite preprocess. These helpers bracket
it: ``mark_weight_operands`` tells the schedule which operands are constants, and
``fold_packed_weights`` moves each marked block into its own function and folds it into the
embedded constants, so the packing runs once at build time and never per call.
"""

from __future__ import annotations


def mark_weight_operands(mod):
    """Tag each PrimFunc's constant-weight parameters (``layout_free_buffers``) for packing.

    A parameter counts when every ``call_tir`` of the function passes a Relax constant there
    (the importer embeds the weights). TVM's ``AttachAttrLayoutFreeBuffers`` does the same but
    rebuilds every kernel under a new name, and its rebuilt generic cumsum (generation graphs)
    no longer compiles; this only adds the attribute.
    """
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    constant_args: dict = {}

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            callee, args = expr.args[0], expr.args[1].fields
            found = {i for i, arg in enumerate(args) if isinstance(arg, tvm.ir.expr.Constant)}
            constant_args[callee] = constant_args.get(callee, found) & found

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    mod = mod.clone()
    for gvar, indices in constant_args.items():
        if indices:
            mod[gvar] = mod[gvar].with_attr("layout_free_buffers", sorted(indices))
    return mod


def _packs_weights(func) -> bool:
    """Whether a scheduled PrimFunc holds a weight-packing block (matmul.py)."""
    import tvm_ffi
    from tvm import s_tir

    found = []
    tvm_ffi.structural_walk(func.body, (s_tir.SBlock, lambda b: found.append(
        "meta_schedule.layout_rewrite_preproc" in b.annotations)), order="post")
    return any(found)


def fold_packed_weights(mod):
    """Split each weight-packing block into its own PrimFunc and fold it into the constants.

    ``SplitLayoutRewritePreproc`` visits every PrimFunc and fails on kernels that are not
    block-structured (TVM's generic cumsum), so it runs on the Relax functions and the packing
    kernels only, and the other kernels rejoin the module after it.
    """
    import tvm
    from tvm import relax, tirx

    others = {gv: f for gv, f in mod.functions.items()
              if isinstance(f, tirx.PrimFunc) and not _packs_weights(f)}
    if len(others) == sum(isinstance(f, tirx.PrimFunc) for f in mod.functions.values()):
        return mod
    split = relax.transform.SplitLayoutRewritePreproc()(tvm.IRModule(
        {gv: f for gv, f in mod.functions.items() if gv not in others}, attrs=mod.attrs))
    for gvar, func in others.items():
        split[gvar] = func
    # The packing kernels ran at build time and the unpacked originals are no longer called.
    return relax.transform.DeadCodeElimination()(relax.transform.FoldConstant()(split))


__all__ = ["fold_packed_weights", "mark_weight_operands"]
