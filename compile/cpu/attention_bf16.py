"""Attention's batched matmuls (``Q K^T`` and ``P V``) with bf16 operands, as a build option.

By default a reduced-precision build keeps attention's batched matmuls in fp32: neither operand
is a constant, so nothing is packed or quantized at build time, and softmax's input keeps full
precision. ``CompileOptions(attention_precision="reduced")`` rounds both operands of each such
matmul to bf16 (round to nearest even) and sums the products in fp32, what a bf16 GEMM computes:
the operands are stored, padded and re-laid in half the bytes, and the fp32 GEMM schedule
(matmul.py) runs on them. Which is faster at a given sequence length is measured, not assumed
(``benchmarks/peers.py --attention-precision fp32,reduced``).

A matmul is attention's when both operands are batched (3-D or more) and neither is a constant:
dense layers, MoE experts (a constant stack of weights) and routers (a constant 2-D weight) are
never touched. int8 builds take bf16 here as well (their tolerance covers it); dynamic int8 for
two runtime operands is not built.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

REDUCED_DTYPE = "bfloat16"
ATTENTION_SWITCH = "+attention-bf16"  # appended to the CPU pipeline's kernel switch (precision.py)
ATTENTION_TAG = "-attnbf16"  # in the build tag, before a trailing "emu"


def with_bf16_attention(kernels: str, tag: str) -> tuple[str, str]:
    """The kernel switch and build tag of a build whose attention matmuls take bf16 operands."""
    emu = "emu" if tag.endswith("emu") else ""
    return kernels + ATTENTION_SWITCH, tag.removesuffix("emu") + ATTENTION_TAG + emu


def split_attention(kernels: str) -> tuple[str, bool]:
    """``kernels`` without the attention switch, and whether it was there."""
    return kernels.removesuffix(ATTENTION_SWITCH), kernels.endswith(ATTENTION_SWITCH)


def _is_attention(lhs, rhs) -> bool:
    import tvm
    from tvm import relax

    def batched_tensor(x) -> bool:
        info = x.ty
        return (isinstance(info, relax.TensorType) and info.dtype == "float32" and info.ndim >= 3
                and not isinstance(x, tvm.ir.expr.Constant))

    return batched_tensor(lhs) and batched_tensor(rhs)


def bf16_attention_matmuls(mod):
    """Rewrite attention's batched matmuls in every Relax function of ``mod`` to bf16 operands
    with fp32 results; other matmuls stay as they are."""
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    lhs, rhs = wildcard(), wildcard()
    pattern = is_op("relax.matmul")(lhs, rhs)
    count = 0

    def rewrite(call, matches):
        nonlocal count
        if not _is_attention(matches[lhs], matches[rhs]):
            return call
        count += 1
        a = relax.op.astype(matches[lhs], REDUCED_DTYPE)  # (.., M, K)
        b = relax.op.astype(matches[rhs], REDUCED_DTYPE)  # (.., K, N)
        return relax.op.matmul(a, b, out_dtype="float32")  # (.., M, N), fp32 sums

    mod = mod.clone()
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gvar] = rewrite_call(pattern, rewrite, func)
    logger.info("%d attention matmul(s) with bf16 operands.", count)
    return mod


__all__ = ["ATTENTION_SWITCH", "ATTENTION_TAG", "REDUCED_DTYPE", "bf16_attention_matmuls", "split_attention",
           "with_bf16_attention"]
