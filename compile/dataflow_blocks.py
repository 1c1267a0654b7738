"""Rewrite the dataflow blocks of a module's Relax functions one block at a time."""

from __future__ import annotations

from collections.abc import Callable


def rewrite_dataflow_blocks(mod, rewrite: Callable) -> int:
    """Replace, in place, each dataflow block of ``mod``'s Relax functions by ``rewrite(block)``,
    which returns ``(new block, changes)``; a function without changes is left as it was.
    Returns the changes summed."""
    from tvm import relax

    total = 0
    for gvar, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
            continue
        blocks, changes = [], 0
        for block in func.body.blocks:
            if isinstance(block, relax.DataflowBlock):
                block, count = rewrite(block)
                changes += count
            blocks.append(block)
        if changes:
            mod[gvar] = relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty,
                                       func.is_pure, func.attrs)
        total += changes
    return total


__all__ = ["rewrite_dataflow_blocks"]
