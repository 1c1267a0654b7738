"""Weight packing for CPU matmuls: mark constant operands, then fold the packed copies.

The default GEMM schedule (matmul.py) re-lays a constant weight as contiguous column
panels inside the kernel, in a block marked as a layout-rewrite preprocess. These helpers bracket
it: ``mark_weight_operands`` tells the schedule which operands are constants, and
``fold_packed_weights`` moves each marked block into its own function and folds it into the
embedded constants, so the packing runs once at build time and never per call.
"""

from __future__ import annotations

from forgeline.compile.owned_module import take_module
from forgeline.runtime.memory import release_freed_memory

from .tied_rows import read_packed_rows


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


FOLD_CHUNK_BYTES = 64 << 20  # packed bytes made per step: the originals of a step go before the next


def fold_packed_weights(mod):
    """Split each weight-packing block into its own PrimFunc and fold it into the constants.

    ``SplitLayoutRewritePreproc`` visits every PrimFunc and fails on kernels that are not
    block-structured (TVM's generic cumsum), so it runs on the Relax functions and the packing
    kernels only, and the other kernels rejoin the module after it.

    The packing calls are folded ``FOLD_CHUNK_BYTES`` of output at a time (``_fold_step``), each step
    making a new module: given an OwnedModule (owned_module.py), nothing else holds the previous
    one, so the originals a step packed are freed before the next, and the build holds one copy
    of the weights plus a step, not the originals and every packed copy at once.
    """
    import tvm
    from tvm import relax, tirx

    mod = take_module(mod)
    others = {gv: f for gv, f in mod.functions.items()
              if isinstance(f, tirx.PrimFunc) and not _packs_weights(f)}
    if len(others) == sum(isinstance(f, tirx.PrimFunc) for f in mod.functions.values()):
        return mod
    split = relax.transform.SplitLayoutRewritePreproc()(tvm.IRModule(
        {gv: f for gv, f in mod.functions.items() if gv not in others}, attrs=mod.attrs))
    del mod
    pending = _constant_calls(split)  # binding vars: they do not hold the weights, the calls do
    while pending:
        split, pending = _fold_step(split, pending)
        release_freed_memory()  # the step's originals: malloc keeps freed pages, the packed copies are larger
    for gvar, func in others.items():
        split[gvar] = func
    # Anything else constant, then the packing kernels ran at build time and the unpacked
    # originals are no longer called; a tied embedding then reads the head's panels (tied_rows.py).
    return read_packed_rows(relax.transform.DeadCodeElimination()(relax.transform.FoldConstant()(split)))


def _constant_calls(mod) -> list:
    """The binding variables of every ``call_tir`` whose inputs are all constants."""
    return [binding.var for binding in _bindings(mod)
            if _is_constant_call(binding.value) and _output_bytes(binding.value) is not None]


def _fold_step(mod, pending: list):
    """``mod`` with the first packing calls of ``pending`` (up to FOLD_CHUNK_BYTES of output)
    replaced by their values; returns it and what is left to fold."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    wanted = set(pending)
    calls = {binding.var: binding.value for binding in _bindings(mod) if binding.var in wanted}
    step, total = [], 0
    for var in pending:
        size = _output_bytes(calls[var])
        if total and total + size > FOLD_CHUNK_BYTES:
            break
        step.append(var)
        total += size
    values = _evaluate(mod, [calls[var] for var in step])
    replace = {var: value for var, value in zip(step, values) if value is not None}
    calls.clear()

    @mutator
    class _Replace(PyExprMutator):
        def visit_var_binding_(self, binding):
            value = replace.get(binding.var)
            if value is None:
                super().visit_var_binding_(binding)
            else:
                self.builder_.emit_normalized(relax.VarBinding(binding.var, value))

    folded = tvm.IRModule({gv: (_Replace().visit_expr(f) if isinstance(f, relax.Function) else f)
                           for gv, f in mod.functions.items()}, attrs=mod.attrs)
    replace.clear()  # TVM keeps the mutator class, and with it this frame's cells: drop the values
    return folded, pending[len(step):]


def _evaluate(mod, calls: list) -> list:
    """The values of constant ``call_tir`` calls, by TVM's FoldConstant on a module of their own."""
    import tvm
    from tvm import relax

    callees = {call.args[0] for call in calls}
    builder = relax.BlockBuilder(tvm.IRModule({gv: mod[gv] for gv in callees}))
    with builder.function("fold_step", []):
        outputs = [builder.emit(call) for call in calls]
        builder.emit_func_output(relax.Tuple(outputs))
    folded = relax.transform.FoldConstant()(builder.get())["fold_step"]
    bound = {b.var: b.value for block in folded.body.blocks for b in block.bindings}
    body = folded.body.body
    fields = body.fields if isinstance(body, relax.Tuple) else bound[body].fields
    values = [bound.get(field, field) for field in fields]
    return [value if isinstance(value, tvm.ir.expr.Constant) else None for value in values]


def _bindings(mod):
    """Every variable binding of the module's Relax functions."""
    from tvm import relax

    for func in mod.functions.values():
        if isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
            for block in func.body.blocks:
                yield from (b for b in block.bindings if isinstance(b, relax.VarBinding))


def _is_constant_call(value) -> bool:
    import tvm
    from tvm import relax

    if not (isinstance(value, relax.Call) and value.op.same_as(tvm.ir.Op.get("relax.call_tir"))):
        return False
    args = value.args[1]
    return (isinstance(args, relax.Tuple) and len(args.fields) > 0
            and all(isinstance(arg, tvm.ir.expr.Constant) for arg in args.fields) and len(value.args) == 2)


def _output_bytes(call) -> int | None:
    """The bytes ``call`` returns; None where a shape is not known at build time."""
    import tvm_ffi
    from tvm import relax, tirx

    total = 0
    for ty in call.ty_args:
        for tensor in (ty.fields if isinstance(ty, relax.TupleType) else [ty]):
            if not isinstance(tensor, relax.TensorType) or not isinstance(tensor.shape, relax.ShapeExpr):
                return None
            if not all(isinstance(dim, tirx.IntImm) for dim in tensor.shape.values):
                return None
            dtype = tvm_ffi.dtype(str(tensor.dtype))
            count = 1
            for dim in tensor.shape.values:
                count *= int(dim)
            total += count * (dtype.bits * dtype.lanes + 7) // 8
    return total


__all__ = ["fold_packed_weights", "mark_weight_operands"]
