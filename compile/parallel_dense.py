"""Sibling dense layers that read the same activation become one dense layer: one GEMM, not three.

Attention projects one normalized activation ``x`` three times (``x @ Wq + bq``, ``x @ Wk + bk``,
``x @ Wv + bv``), and so does any block whose parallel dense layers share their input (GQA's
narrower K/V, a parallel-block transformer's MLP beside its projections). At batch 1 each
of those GEMMs is small: three passes over ``x``, three kernel launches, and in int8 three
quantizations of the same rows. This rewrite, run on the imported Relax graph before the
dense-layer rewrites (fp32 GEMM schedule, bf16, int8), replaces a group of siblings by

    xw = x @ concat(Wq, Wk, Wv) + concat(bq, bk, bv)     # (..., Nq + Nk + Nv)
    q, k, v = strided_slice(xw, last axis)               # each (..., N_i)

with the weights concatenated here, at build time (constants: the weight store lifts them like
any other weight). Where a member's only reader is attention's head split, ``reshape(out, (...,
heads, head_dim))``, the slice moves past the reshape: ``xw`` is viewed as ``(..., all heads,
head_dim)`` (a reshape without a copy) and the member's heads are sliced from that, so the slice
fuses with the transpose that follows into one kernel and adds no pass over the activation.

A sibling stays on its own when its output feeds a softmax (an MoE router: its expert choice
must stay fp32 and untouched) or a GELU (an FFN's first layer: the dense kernels fuse GELU into
their write-back, which a slice would break). A member without a bias gets zeros in the
concatenated bias.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .dataflow_blocks import rewrite_dataflow_blocks
from .dense_layers import dense_shape

logger = logging.getLogger(__name__)
# a sibling whose output feeds one of these keeps its own dense layer (see the module docstring)
_KEEP_ALONE = ("relax.nn.softmax", "relax.nn.gelu", "relax.nn.gelu_tanh")


@dataclass
class _Member:
    """One dense layer ``out = x @ weight (+ bias)`` of a sibling group."""

    matmul: object  # the VarBinding of ``x @ weight``
    add: object | None  # the VarBinding of ``+ bias``, None without one
    weight: object  # the Relax constant (K, N); read as numpy only when its group is combined
    n: int  # N
    bias: np.ndarray | None  # (N,)
    heads: object | None = None  # the VarBinding of the head split ``reshape(out, (..., h, d))``

    @property
    def out(self):
        return (self.add or self.matmul).var


def _op(value) -> str:
    from tvm import relax

    return getattr(value.op, "name", "") if isinstance(value, relax.Call) else ""


def _bias_add(binding, mm_var, n: int):
    """The constant ``(N,)`` fp32 bias of ``binding`` when it is ``mm_var + bias``, else None."""
    import tvm

    value = binding.value
    if _op(value) != "relax.add":
        return None
    args = list(value.args)
    if not any(a.same_as(mm_var) for a in args):
        return None
    other = args[1] if args[0].same_as(mm_var) else args[0]
    if not isinstance(other, tvm.ir.GenericConst):
        return None
    bias = other.value.numpy()
    return bias if bias.dtype == np.float32 and bias.shape == (n,) else None


def _head_split(binding, out, x):
    """``binding`` when it is ``reshape(out, (*lead of x, h, d))`` with ``h d`` = N, else None."""
    import tvm_ffi
    from tvm import relax, tirx

    if binding is None or _op(binding.value) != "relax.reshape" or not binding.value.args[0].same_as(out):
        return None
    shape, lead = binding.var.ty.shape, x.ty.shape.values[:-1]
    if not isinstance(shape, relax.ShapeExpr) or len(shape.values) != len(lead) + 2:
        return None
    h, d = shape.values[-2:]
    n = out.ty.shape.values[-1]
    if not all(isinstance(v, tirx.IntImm) for v in (h, d, n)) or int(h) * int(d) != int(n):
        return None
    same_lead = all(tvm_ffi.structural_equal(a, b) for a, b in zip(shape.values[:-2], lead))
    return binding if same_lead else None


def _members(block) -> dict:
    """The dense layers of ``block``, grouped by their activation (a Var): ``{x: [_Member]}``."""
    from tvm import relax

    users = relax.analysis.udchain(block)
    bindings = {b.var: b for b in block.bindings}

    def only_user(var):
        found = users.get(var, [])
        return bindings.get(found[0]) if len(found) == 1 and isinstance(var, relax.DataflowVar) else None

    def kept_alone(var) -> bool:
        return any(_op(bindings[u].value) in _KEEP_ALONE for u in users.get(var, []) if u in bindings)

    groups: dict = {}
    for binding in block.bindings:
        value = binding.value
        if _op(value) != "relax.matmul" or not isinstance(value.args[0], relax.Var):
            continue
        x, w = value.args
        shape = dense_shape(x, w)
        if shape is None:
            continue
        user = only_user(binding.var)
        bias = _bias_add(user, binding.var, shape[1]) if user is not None else None
        member = _Member(binding, user if bias is not None else None, w, shape[1], bias)
        member.heads = _head_split(only_user(member.out), member.out, x)
        if not kept_alone(member.out):
            groups.setdefault(x, []).append(member)
    return {x: group for x, group in groups.items() if len(group) > 1}


def _combined_bindings(x, group: list[_Member]) -> list:
    """``x @ concat(W) (+ concat(b))`` and one slice per member, bound to the member's own var."""
    from tvm import relax, tirx

    lead = list(x.ty.shape.values[:-1])
    axis = len(lead)
    total = sum(m.n for m in group)
    weight = np.concatenate([m.weight.value.numpy() for m in group], axis=1)  # (K, sum N)
    out_type = relax.TensorType([*lead, tirx.IntImm("int64", total)], "float32")
    fused = relax.DataflowVar("parallel_dense", out_type)
    bindings = [relax.VarBinding(fused, relax.op.matmul(x, relax.const(weight)))]
    if any(m.bias is not None for m in group):
        bias = np.concatenate([m.bias if m.bias is not None else np.zeros(m.n, np.float32)
                               for m in group])
        biased = relax.DataflowVar("parallel_dense_bias", out_type)
        bindings.append(relax.VarBinding(biased, relax.op.add(fused, relax.const(bias))))
        fused = biased
    views: dict = {}  # head_dim -> ``fused`` viewed as (*lead, total / head_dim, head_dim)
    start = 0
    for m in group:
        end = start + m.n
        d = int(m.heads.var.ty.shape.values[-1]) if m.heads is not None else 0
        if d and start % d == 0 and total % d == 0:  # slice whole heads of the viewed output
            if d not in views:
                views[d] = relax.DataflowVar(f"parallel_dense_heads{d}", relax.TensorType(
                    [*lead, tirx.IntImm("int64", total // d), tirx.IntImm("int64", d)], "float32"))
                bindings.append(relax.VarBinding(views[d], relax.op.reshape(fused, views[d].ty.shape)))
            bindings.append(relax.VarBinding(m.heads.var, relax.op.strided_slice(
                views[d], [axis], [start // d], [end // d], assume_inbound=True)))
        else:
            m.heads = None  # its head split (if any) stays where it is and reads the slice
            bindings.append(relax.VarBinding(m.out, relax.op.strided_slice(
                fused, [axis], [start], [end], assume_inbound=True)))
        start = end
    return bindings


def _combine_block(block) -> tuple[object, int]:
    """``block`` with every sibling group combined, and the number of groups."""
    from tvm import relax

    groups = _members(block)
    if not groups:
        return block, 0
    first = {}  # the binding at which a group's combined dense is emitted -> (x, group)
    dropped = set()
    for x, group in groups.items():
        first[group[0].matmul] = (x, group)
        for m in group:
            dropped.update(b for b in (m.matmul, m.add) if b is not None)
    bindings = []
    for binding in block.bindings:
        if binding in first:
            x, group = first[binding]
            bindings.extend(_combined_bindings(x, group))
            dropped.update(m.heads for m in group if m.heads is not None)  # now bound above
        elif binding not in dropped:
            bindings.append(binding)
    return relax.DataflowBlock(bindings), len(groups)


def combine_parallel_dense(mod):
    """``mod`` with sibling dense layers (same activation, constant 2-D weights) combined."""
    from tvm import relax

    mod = mod.clone()
    combined = rewrite_dataflow_blocks(mod, _combine_block)
    if not combined:
        return mod
    logger.info("Combined %d groups of sibling dense layers (one GEMM each).", combined)
    return relax.transform.Normalize()(mod)


__all__ = ["combine_parallel_dense"]
