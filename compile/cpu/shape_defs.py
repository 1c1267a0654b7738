"""Keep each data-dependent shape defined before its first use, after operator fusion.

The MoE row compaction (moe_rows.py) defines its block's row count by ``match_cast`` of a shape
read from a tensor (``moe_rows<i>``), and the calls after it allocate outputs of that many rows.
Those calls depend on the count only through the symbolic variable, not through a Relax value,
so TVM 0.27's FuseOps, which re-emits a dataflow block in the order of its value dependencies,
may put them before the ``match_cast``; VMShapeLower then stops with "moe_rows1 has not been
computed". It happened on gpt-moe-tc small's prefill graph in int8, where the KV-cache outputs of
all layers fuse into one kernel. This pass moves each such ``match_cast``, with the bindings it
needs that came after the first use, to just before that first use.
"""

from __future__ import annotations


def hoist_shape_definitions(mod):
    """``mod`` with every dataflow block's symbolic shapes defined before their first use."""
    from tvm import relax

    for gvar, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
            continue
        blocks = [_reordered(block) for block in func.body.blocks]
        if all(new is old for new, old in zip(blocks, func.body.blocks)):
            continue
        body = relax.SeqExpr(blocks, func.body.body)
        mod[gvar] = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
    return mod


def _reordered(block):
    from tvm import relax

    bindings = list(block.bindings)
    moved = False
    for cast in [b for b in bindings if isinstance(b, relax.MatchCast)]:
        names = {v.name for v in relax.analysis.tir_vars_in_type(cast.ty)}
        at = bindings.index(cast)
        first = next((i for i, b in enumerate(bindings[:at]) if names & _symbols(b)), None)
        if first is None:
            continue
        # the cast and the bindings after ``first`` it reads, in their order, go before ``first``
        needed, wanted = [], {id(cast)}
        for b in reversed(bindings[first:at + 1]):
            if id(b) in wanted:
                needed.append(b)
                wanted |= {id(d) for d in bindings[first:at] if _reads(b, d)}
        needed.reverse()
        bindings = bindings[:first] + needed + [b for b in bindings[first:] if not any(b.same_as(n) for n in needed)]
        moved = True
    if not moved:
        return block
    return relax.DataflowBlock(bindings) if isinstance(block, relax.DataflowBlock) else relax.BindingBlock(bindings)


def _symbols(binding) -> set[str]:
    """Names of the symbolic variables a binding's result type mentions."""
    from tvm import relax

    return {v.name for v in relax.analysis.tir_vars_in_type(binding.var.ty)}


def _reads(binding, other) -> bool:
    """Whether ``binding``'s value reads the variable ``other`` binds."""
    from tvm import relax

    return any(v.same_as(other.var) for v in relax.analysis.free_vars(binding.value))


__all__ = ["hoist_shape_definitions"]
