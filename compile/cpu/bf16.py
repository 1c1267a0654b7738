"""``--precision bf16`` on CPU: dense layers become calls of a bf16 GEMM: AMX tiles (amx.py) or
AVX512-BF16's ``vdpbf16ps`` (dpbf16.py), as compile/precision.py picks for the CPU.

Runs on the imported Relax module, before legalization. Every ``matmul(x, W)`` whose weight is a
constant ``(K, N)`` fp32 matrix, with the ``+ bias`` that follows it when the bias is a constant
``(N,)`` vector, becomes ``reshape(call_tir(amx_dense_KxN, [reshape(x, (m, K)), W_packed, bias]))``, and a residual
``r + (x @ W + bias)`` of the same shape joins the kernel's write-back (``amx_dense_KxN_residual``):

- ``W_packed`` is the weight rounded to bf16 and packed into the kernel's VNNI panels here, at
  build time, so the library embeds half the bytes of the fp32 weight.
- ``m`` is the product of x's leading dimensions and stays symbolic (batch x sequence).
- What stays fp32: MoE routers (a matmul that feeds a softmax: the expert choice must not move
  with bf16 rounding), attention's batched matmuls (no constant operand), layer norm, softmax
  and every reduction. Those keep the fp32 schedules. The experts' stacked 3-D weights are not
  dense layers here: they take the grouped bf16 GEMM (bf16_moe.py, through moe_rows.py).

The rewrite itself (``rewrite_dense_layers``) serves every reduced precision: a ``DenseLowering``
names the kernel, the build-time weight operands and the activations its epilogue can apply
(int8_layers.py lowers to the int8 GEMM with GELU fused, as does the AMX kernel; the AVX512-BF16
kernel's GELU is fused afterwards by dense_gelu.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from forgeline.compile.dense_layers import dense_shape

from . import amx, dpbf16
from .epilogues import GELU, GELU_OPS
from .packed_rows import amx_bf16_element, bf16_residual, dpbf16_element, rows_kernel, with_residual
from .tied_rows import call_rows, equal_transposed, is_row_lookup, row_lookup_pattern

# kernel name -> (PrimFunc factory (k, n, *, residual, emulate), weight packing (K, N) -> panels)
DENSE_KERNELS = {"amx": (amx.amx_dense, amx.pack_weight),
                 "avx512bf16": (dpbf16.dpbf16_dense, dpbf16.pack_weight)}

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DenseLowering:
    """How a precision lowers ``x @ W + bias (+ residual)``: its kernel and its weight operands.

    The kernel is called as ``kernel(x (m, K), *weight_operands(W), bias (N,), [residual (m, N),]
    out (m, N))``; the operands are computed here at build time and embedded as constants.
    """

    label: str  # for the log line: what the dense layers run on
    kernel: Callable  # (K, N, residual: bool[, activation: Relax op name]) -> (PrimFunc, name)
    weight_operands: Callable  # (W (K, N) fp32 ndarray) -> list of ndarrays
    activations: tuple[str, ...] = ()  # Relax ops on ``x @ W + bias`` the kernel's epilogue applies
    # Reads element (row t, column k) of W^T back from the packed operands named by
    # ``row_operands`` (packed_rows.py): a tied embedding then looks up the head's packed copy.
    row_element: Callable | None = None
    row_operands: tuple[int, ...] = (0,)
    # bf16: the lookup also reads the table's rounding residual (packed_rows.bf16_residual), so
    # the embedding keeps fp32's values although the head multiplies by bf16 ones.
    row_residual: bool = False


def bf16_lowering(kernel: str, emulate: bool) -> DenseLowering:
    """The bf16 ``kernel`` of ``DENSE_KERNELS``; its PrimFuncs are named ``{kernel}_dense_KxN[_residual]``
    (dense_gelu.py finds the AVX512-BF16 ones by that prefix)."""
    make, pack = DENSE_KERNELS[kernel]

    def build(k: int, n: int, residual: bool, activation: str | None = None):
        name = f"{kernel}_dense_{k}x{n}" + ("_residual" if residual else "")
        if activation:  # only the AMX kernel is offered one (``activations`` below)
            return make(k, n, residual=residual, emulate=emulate, activation=activation), \
                name + f"_{activation.split('.')[-1]}"
        return make(k, n, residual=residual, emulate=emulate), name

    return DenseLowering(label=f"bf16: the {kernel} kernel" + (", emulated in TIR loops" if emulate else ""),
                         kernel=build, weight_operands=lambda weight: [pack(weight)],
                         activations=tuple(GELU) if kernel == "amx" else (),
                         row_element=amx_bf16_element if kernel == "amx" else dpbf16_element,
                         row_residual=True)


def amx_lowering(emulate: bool) -> DenseLowering:
    return bf16_lowering("amx", emulate)


def amx_rows_lowering(emulate: bool) -> DenseLowering:
    """An AMX build's graphs of fixed few rows (decode: one per sequence): the ``vdpbf16ps``
    kernel reading the AMX kernel's own packed weights (``dpbf16_dense(amx_panels=True)``), so
    every graph of the build shares one copy. A 32-row tile block would compute 32 rows for
    one; every AMX CPU has AVX512-BF16, and an AMX bf16 build requires it."""

    def build(k: int, n: int, residual: bool, activation: str | None = None):
        name = f"avx512bf16_amx_panels_dense_{k}x{n}" + ("_residual" if residual else "")
        gelu = GELU_OPS[activation] if activation else None
        func = dpbf16.dpbf16_dense(k, n, residual=residual, gelu=gelu, emulate=emulate, amx_panels=True)
        return func, name + (f"_{activation.split('.')[-1]}" if activation else "")

    label = "bf16: the avx512bf16 kernel on AMX panels" + (", emulated in TIR loops" if emulate else "")
    return DenseLowering(label=label, kernel=build, weight_operands=lambda weight: [amx.pack_weight(weight)],
                         activations=tuple(GELU_OPS), row_element=amx_bf16_element, row_residual=True)


def _router_matmuls(func) -> list:
    """The matmul calls whose result feeds a softmax, directly or through one bias add."""
    from tvm import relax

    values: dict = {}
    routers: list = []

    def visit(node) -> None:
        if isinstance(node, relax.VarBinding):
            values[node.var] = node.value

    def visit_softmax(node) -> None:
        if isinstance(node, relax.Call) and getattr(node.op, "name", "") == "relax.nn.softmax":
            source = values.get(node.args[0])
            if source is not None and getattr(source.op, "name", "") == "relax.add":
                source = values.get(source.args[0], source)
            if source is not None and getattr(source.op, "name", "") == "relax.matmul":
                routers.append(source)

    for block in func.body.blocks:
        for binding in block.bindings:
            visit(binding)
    relax.analysis.post_order_visit(func.body, visit_softmax)
    return routers


class _Rewriter:
    """Builds the replacement calls and collects one kernel per (K, N)."""

    def __init__(self, mod, lowering: DenseLowering):
        from tvm import relax

        self.builder = relax.BlockBuilder(mod)  # add_func gives GlobalVars typed as PrimFuncs
        self.lowering = lowering
        self.kernels: dict = {}  # (K, N, residual, activation) -> GlobalVar of its kernel
        # address of a weight's data -> (the fp32 weight constant, its packed operand constants)
        self.packed: dict[int, tuple] = {}
        self.row_readers: dict = {}  # (K, N) -> GlobalVar of the packed-rows reader
        self.residuals: dict = {}  # id of a head's packed operands -> its tied table's bf16 residual
        self.count = 0
        self.tied = 0

    def kernel(self, k: int, n: int, residual: bool, activation: str | None):
        key = (k, n, residual, activation)
        if key not in self.kernels:
            extra = (activation,) if activation else ()
            func, name = self.lowering.kernel(k, n, residual, *extra)
            self.kernels[key] = self.builder.add_func(func, name)
        return self.kernels[key]

    def dense(self, x, weight, bias, residual=None, activation: str | None = None):
        """The replacement of ``act(x @ weight + bias) (+ residual)`` (bias a constant or None)."""
        from tvm import relax, tirx

        k, n = dense_shape(x, weight)
        lead = list(x.ty.shape.values[:-1])
        rows = lead[0]
        for dim in lead[1:]:
            rows = rows * dim
        bias_const = bias if bias is not None else relax.const(np.zeros(n, np.float32))
        operands = self.operands(weight)
        flat = relax.op.reshape(x, relax.ShapeExpr([rows, tirx.IntImm("int64", k)]))
        args = [flat, *operands, bias_const]
        if residual is not None:
            args.append(relax.op.reshape(residual, relax.ShapeExpr([rows, tirx.IntImm("int64", n)])))
        out = relax.call_tir(self.kernel(k, n, residual is not None, activation), args,
                             relax.TensorType([rows, n], "float32"))
        self.count += 1
        return relax.op.reshape(out, relax.ShapeExpr([*lead, tirx.IntImm("int64", n)]))

    def operands(self, weight) -> list:
        """The packed operand constants of ``weight``, packed once however many layers read it."""
        from tvm import relax

        key = np.from_dlpack(weight.value).__array_interface__["data"][0]
        if key not in self.packed:
            self.packed[key] = (weight, [relax.const(v) for v in self.lowering.weight_operands(weight.value.numpy())])
        return self.packed[key][1]

    def tied_operands(self, table):
        """The packed operands of a dense weight equal to ``table.T`` (a tied LM head), or None."""
        if self.lowering.row_element is None:
            return None
        rows = np.from_dlpack(table.value)  # (V, D)
        for weight, operands in self.packed.values():
            if tuple(weight.value.shape) == rows.shape[::-1] and equal_transposed(np.from_dlpack(weight.value), rows):
                return operands
        return None

    def rows(self, table, ids, operands):
        """``take(table, ids, axis=0)`` read from the head's packed ``operands`` instead."""
        from tvm import relax

        n, k = (int(d) for d in table.value.shape)
        chosen = [operands[i] for i in self.lowering.row_operands]
        element = self.lowering.row_element
        if self.lowering.row_residual:  # one residual per head, however many functions look it up
            key = id(operands)
            if key not in self.residuals:
                self.residuals[key] = relax.const(bf16_residual(np.from_dlpack(table.value)))
            chosen.append(self.residuals[key])
            element = with_residual(element)
        if (k, n) not in self.row_readers:
            types = [(tuple(int(d) for d in op.value.shape), str(op.value.dtype)) for op in chosen]
            self.row_readers[(k, n)] = self.builder.add_func(
                rows_kernel(types, k, n, element), f"packed_rows_{k}x{n}")
        self.tied += 1
        return call_rows(self.row_readers[(k, n)], chosen, ids, k)


def _bias_of(weight, bias) -> bool:
    info = bias.ty
    return (info.dtype == "float32" and info.ndim == 1
            and int(bias.value.shape[0]) == int(weight.value.shape[1]))


def _is_skip(call, other) -> bool:
    """Whether ``other`` is a same-shaped fp32 addend of ``call`` (no broadcast): a residual."""
    import tvm_ffi

    info = other.ty
    return (getattr(info, "dtype", None) == "float32" and info.shape is not None
            and call.ty.shape is not None and tvm_ffi.structural_equal(info.shape, call.ty.shape))


def bf16_dense_matmuls(mod, *, emulate: bool = False, kernel: str = "amx", rows: int | None = None):
    """Rewrite the dense layers of every Relax function in ``mod`` to the bf16 ``kernel``; an AMX
    build's graphs with a fixed tile height ``rows`` (decode) take ``amx_rows_lowering``."""
    if kernel == "amx" and rows is not None:
        return rewrite_dense_layers(mod, amx_rows_lowering(emulate))
    return rewrite_dense_layers(mod, bf16_lowering(kernel, emulate))


def rewrite_dense_layers(mod, lowering: DenseLowering):
    """Rewrite the dense layers of every Relax function in ``mod`` to ``lowering``'s kernel."""
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    rewriter = _Rewriter(mod.clone(), lowering)
    rewritten = {}
    x, weight, bias = wildcard(), is_const(), is_const()
    matmul = is_op("relax.matmul")(x, weight)
    with_bias = is_op("relax.add")(matmul, bias)
    skip = wildcard()
    residuals = [is_op("relax.add")(skip, with_bias), is_op("relax.add")(with_bias, skip)]
    for gvar, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function):
            continue
        routers = _router_matmuls(func)

        def eligible(matches) -> bool:
            call = matches[matmul]
            return (not any(call.same_as(r) for r in routers)
                    and dense_shape(matches[x], matches[weight]) is not None)

        def fuse_bias(call, matches):
            if not eligible(matches) or not _bias_of(matches[weight], matches[bias]):
                return call
            return rewriter.dense(matches[x], matches[weight], matches[bias])

        def plain(call, matches):
            return rewriter.dense(matches[x], matches[weight], None) if eligible(matches) else call

        def fuse_residual(call, matches):
            if not (_is_skip(call, matches[skip]) and eligible(matches)
                    and _bias_of(matches[weight], matches[bias])):
                return call
            return rewriter.dense(matches[x], matches[weight], matches[bias], matches[skip])

        for pattern in residuals:
            func = rewrite_call(pattern, fuse_residual, func)
        for op_name in lowering.activations:  # GELU on an FFN's first layer joins its epilogue

            def fuse_activation(call, matches, op_name=op_name):
                if not eligible(matches) or not _bias_of(matches[weight], matches[bias]):
                    return call
                return rewriter.dense(matches[x], matches[weight], matches[bias], activation=op_name)

            func = rewrite_call(is_op(op_name)(with_bias), fuse_activation, func)
        func = rewrite_call(with_bias, fuse_bias, func)
        func = rewrite_call(matmul, plain, func)
        rewritten[gvar] = func
    for gvar, func in rewritten.items():  # every head is packed now, in whichever function
        rewritten[gvar] = _read_tied_rows(func, rewriter)
    mod = rewriter.builder.get()
    rewriter.packed.clear()  # the rewrite callbacks may outlive this call: they must not hold the weights
    rewriter.residuals.clear()
    for gvar, func in rewritten.items():
        mod[gvar] = func
    logger.info("%d dense matmuls on %s (%d kernel shapes)%s.", rewriter.count, lowering.label,
                len(rewriter.kernels),
                f"; {rewriter.tied} embedding lookup(s) read the tied head's packed copy" if rewriter.tied else "")
    return relax.transform.DeadCodeElimination()(mod)


def _read_tied_rows(func, rewriter: _Rewriter):
    """Each ``take(E, ids, axis=0)`` whose constant table is a packed head's weight transposed
    reads its rows from the head's packed operands (packed_rows.py); ``E`` is then unused."""
    from tvm.relax.dpl import rewrite_call

    pattern, table, ids = row_lookup_pattern()

    def lookup(call, matches):
        const, index = matches[table], matches[ids]
        if not is_row_lookup(call, const, index):
            return call
        operands = rewriter.tied_operands(const)
        return call if operands is None else rewriter.rows(const, index, operands)

    return rewrite_call(pattern, lookup, func)


__all__ = ["DENSE_KERNELS", "DenseLowering", "amx_lowering", "bf16_dense_matmuls", "bf16_lowering",
           "rewrite_dense_layers"]
