"""``--precision int8`` on CPU: dense layers become calls of the dynamically quantized int8 GEMM.

The dense layers (projections, FFNs, LM/MLM heads: every ``x @ W (+ bias) (+ residual)`` with a
constant 2-D weight) are rewritten by the same Relax rewrite as bf16 (bf16.py,
``rewrite_dense_layers``) into calls of ``int8_dense`` (int8.py), with the weight quantized and
packed here, at build time. What stays fp32 is what stays fp32 in bf16: MoE routers (a matmul
feeding a softmax: quantization must not move the expert choice), attention's batched matmuls
(no constant operand), layer norm, softmax and every reduction. MoE experts' stacked weights go
to the int8 grouped GEMM (int8_moe.py, through moe_rows.py: ``int8_experts``).

The precision string of the pipeline names the kernel: ``int8-amx``, ``int8-vnni``, ``int8-avx2``,
with ``-emulated`` for the plain-TIR emulation of any (compile/precision.py picks it). An AMX
build runs its dense layers on AMX tiles (amx_int8.py) and keeps the VNNI kernel where the rows
are fixed few (decode graphs: a 32-row tile block would be mostly padding) and for the MoE
experts' grouped GEMM; every AMX CPU has AVX512-VNNI, and an AMX build requires it.
"""

from __future__ import annotations

from dataclasses import replace

from .amx_int8 import AMX_INT8, amx_int8_dense
from .amx_int8 import pack_weight as pack_amx_weight
from .bf16 import DenseLowering, rewrite_dense_layers
from .epilogues import GELU
from .int8 import ISAS, VNNI, int8_dense, pack_weight
from .int8_moe import grouped_int8_kernel, pack_expert_weights
from .packed_rows import int8_element


def _kernel_name(isa: str, k: int, n: int, residual: bool, activation: str | None) -> str:
    name = f"int8_{isa}_dense_{k}x{n}" + ("_residual" if residual else "")
    return name + (f"_{activation.split('.')[-1]}" if activation else "")


def int8_lowering(isa_name: str, emulate: bool, rows: int | None = None) -> DenseLowering:
    """``rows`` overrides the register tile's height (1 for decode graphs: one row per sequence)."""
    if isa_name == AMX_INT8.name:
        if rows is None:
            return amx_int8_lowering(emulate)
        isa_name = VNNI.name
    isa = ISAS[isa_name] if rows is None else replace(ISAS[isa_name], rows=rows)

    def kernel(k: int, n: int, residual: bool, activation: str | None = None):
        func = int8_dense(k, n, isa, residual=residual, emulate=emulate, activation=activation)
        return func, _kernel_name(isa.name, k, n, residual, activation)

    label = f"int8: the {isa.name} kernel" + (", emulated in TIR loops" if emulate else "")
    return DenseLowering(label=label, kernel=kernel,
                         weight_operands=lambda weight: list(pack_weight(weight, isa)),
                         activations=tuple(GELU), row_element=int8_element(isa.lanes), row_operands=(0, 1))


def amx_int8_lowering(emulate: bool) -> DenseLowering:
    """The AMX int8 kernel (amx_int8.py), GELU fused as in the VNNI one."""

    def kernel(k: int, n: int, residual: bool, activation: str | None = None):
        func = amx_int8_dense(k, n, residual=residual, emulate=emulate, activation=activation)
        return func, _kernel_name(AMX_INT8.name, k, n, residual, activation)

    label = "int8: the AMX kernel" + (", emulated in TIR loops" if emulate else "")
    return DenseLowering(label=label, kernel=kernel, weight_operands=lambda weight: list(pack_amx_weight(weight)),
                         activations=tuple(GELU), row_element=int8_element(16), row_operands=(0, 1))


def int8_dense_matmuls(mod, precision: str, rows: int | None = None):
    """Rewrite ``mod``'s dense layers to the int8 kernel ``precision`` names ("int8-vnni", ...).

    ``rows`` fixes the tile height, as ``gemm_rows`` does for the fp32 GEMM: a decode step has one
    row per sequence, and a 7-row tile would compute 7x its work at batch 1.
    """
    _, isa_name, *emulated = precision.split("-")
    return rewrite_dense_layers(mod, int8_lowering(isa_name, emulate=bool(emulated), rows=rows))


def int8_experts(precision: str) -> DenseLowering:
    """The MoE experts' grouped GEMM in int8 (int8_moe.py), for moe_rows.compact_expert_rows."""
    _, isa_name, *emulated = precision.split("-")
    isa, emulate = ISAS.get(isa_name, VNNI), bool(emulated)  # AMX builds: VNNI experts

    def kernel(k: int, n: int):
        return grouped_int8_kernel(k, n, isa, emulate=emulate), f"moe_grouped_int8_{isa.name}_{k}x{n}"

    return DenseLowering(label=f"int8: the {isa.name} grouped kernel", kernel=kernel,
                         weight_operands=lambda weight: pack_expert_weights(weight, isa))


__all__ = ["amx_int8_lowering", "int8_dense_matmuls", "int8_experts", "int8_lowering"]
