"""Fuse the GELU that follows a bf16 dense layer into the AVX512-BF16 kernel's write-back.

bf16.py turns ``gelu(x @ W + b)`` into ``gelu(reshape(call_tir(avx512bf16_dense_KxN, ...)))``;
this pass swaps such a call for the kernel variant whose epilogue applies GELU as the tile leaves
the registers (dpbf16.py, epilogues.py), as the fp32 GEMM schedule fuses it: one pass over the
FFN's widest activation less per layer. ``nn.gelu`` takes the erf form and ``nn.gelu_tanh``
(GPT-2's) the tanh form. Other kernels and a residual variant are left as they are.
"""

from __future__ import annotations

import logging

from .dpbf16 import dpbf16_dense
from .epilogues import GELU_OPS

logger = logging.getLogger(__name__)
KERNEL_PREFIX = "avx512bf16_dense_"  # the names bf16.py gives this kernel's PrimFuncs


def fuse_dense_gelu(mod, *, emulate: bool = False):
    """``mod`` with every GELU of an AVX512-BF16 dense kernel's output fused into the kernel."""
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    builder = relax.BlockBuilder(mod.clone())
    kernels: dict = {}  # (k, n, kind) -> GlobalVar
    fused = 0
    tir_call = is_op("relax.call_tir")(wildcard(), wildcard())
    reshape = is_op("relax.reshape")(tir_call, wildcard())

    def fuse(kind: str):
        def rewrite(call, matches):
            nonlocal fused
            inner = matches[tir_call]
            name = inner.args[0].name_hint
            if not name.startswith(KERNEL_PREFIX) or name.endswith("_residual"):
                return call
            k = int(inner.args[1].fields[0].ty.shape.values[-1])  # A: (m, K)
            n = int(inner.ty.shape.values[-1])  # C: (m, N)
            if (k, n, kind) not in kernels:
                kernels[(k, n, kind)] = builder.add_func(
                    dpbf16_dense(k, n, gelu=kind, emulate=emulate), f"{KERNEL_PREFIX}{k}x{n}_gelu_{kind}")
            fused += 1
            out = relax.call_tir(kernels[(k, n, kind)], inner.args[1], inner.ty)
            return relax.op.reshape(out, matches[reshape].args[1])

        return rewrite

    rewritten = {}
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            for op, kind in GELU_OPS.items():
                func = rewrite_call(is_op(op)(reshape), fuse(kind), func)
            rewritten[gvar] = func
    out = builder.get()
    for gvar, func in rewritten.items():
        out[gvar] = func
    logger.info("bf16: %d GELUs fused into the AVX512-BF16 kernel's epilogue.", fused)
    return relax.transform.DeadCodeElimination()(out)


__all__ = ["fuse_dense_gelu"]
