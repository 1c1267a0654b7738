"""The AVX512-BF16 GEMM (compile/cpu/dpbf16.py) against numpy on torch-rounded bf16 inputs.

The emulated kernel (``vdpbf16ps`` as TIR vector arithmetic, the same loops and addresses) runs on
every host; the native kernel is compiled everywhere, its object checked for ``vdpbf16ps``, and
it runs where the CPU has AVX512-BF16.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forgeline.compile.cpu import amx
from forgeline.compile.cpu.dpbf16 import TILE_ROWS, dpbf16_dense, pack_weight
from forgeline.runtime.host import read_cpu_features

HAS_DPBF16 = {"avx512f", "avx512_bf16"} <= read_cpu_features()
NATIVE_TARGET = {"kind": "llvm", "mattr": ["+avx512f", "+avx512bw", "+avx512bf16"], "num-cores": 2}
PLAIN_TARGET = {"kind": "llvm", "num-cores": 2}
# Row counts at one symbolic-m build: 1 (a decode step), 4-row and single-row edges, whole 12-row
# tiles, and 128 = 10 tiles + an 8-row edge.
ROWS = [1, 3, 4, 5, TILE_ROWS, TILE_ROWS + 1, 29, 128]


def _build(k: int, n: int, *, emulate: bool, residual: bool = False, gelu: str | None = None,
           target: dict = PLAIN_TARGET, amx_panels: bool = False):
    import tvm

    func = dpbf16_dense(k, n, residual=residual, gelu=gelu, emulate=emulate, amx_panels=amx_panels)
    func = func.with_attr("global_symbol", "main")
    return tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(target))


def _torch_bf16(values: np.ndarray) -> np.ndarray:
    """Values rounded to bf16 by torch (an independent rounding), as float64."""
    return torch.from_numpy(values).to(torch.bfloat16).to(torch.float64).numpy()


def _run(lib, a, w, bias, skip=None, pack=pack_weight):
    import tvm

    out = tvm.runtime.tensor(np.full((a.shape[0], w.shape[1]), np.nan, np.float32))
    extra = [] if skip is None else [tvm.runtime.tensor(skip)]
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(pack(w)), tvm.runtime.tensor(bias),
                *extra, out)
    return out.numpy()


def _check(lib, k: int, n: int, *, residual: bool = False, pack=pack_weight) -> None:
    rng = np.random.default_rng(k * 1000 + n)
    w = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    for m in ROWS:  # one build serves every row count: m is symbolic
        a = rng.standard_normal((m, k)).astype(np.float32)
        skip = rng.standard_normal((m, n)).astype(np.float32) if residual else None
        got = _run(lib, a, w, bias, skip, pack)
        want = _torch_bf16(a) @ _torch_bf16(w) + bias + (0 if skip is None else skip)
        # fp32 accumulation of k exact bf16 products: error ~ k * 2^-24 * sum|a w|
        scale = np.abs(_torch_bf16(a)) @ np.abs(_torch_bf16(w)) + 1
        assert np.all(np.abs(got - want) <= 4 * k * 2.0 ** -24 * scale), (m, k, n)
        # and not fp32's result: the operands really were rounded to bf16
        assert np.abs(got - (a.astype(np.float64) @ w + bias + (0 if skip is None else skip))).max() > 1e-4


def test_pack_weight_layout():
    w = np.random.default_rng(1).standard_normal((37, 21)).astype(np.float32)
    packed = pack_weight(w)
    assert packed.shape == (1, 19, 32) and packed.dtype == np.uint32  # N 21->32, K 37->38
    bits = torch.from_numpy(w).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    for p, kk, j in np.ndindex(packed.shape):
        n = 32 * p + j
        low = bits[2 * kk, n] if n < 21 else 0
        high = bits[2 * kk + 1, n] if n < 21 and 2 * kk + 1 < 37 else 0
        assert packed[p, kk, j] == int(low) | int(high) << 16


@pytest.fixture(scope="module")
def native_51x70():
    return _build(51, 70, emulate=False, target=NATIVE_TARGET)


@pytest.mark.parametrize("k,n", [(51, 70), (1, 5)])  # odd K, a whole and a partial panel, K = 1
def test_emulated_kernel_matches_numpy(k, n):
    _check(_build(k, n, emulate=True), k, n)


def test_emulated_kernel_adds_bias_and_residual():
    _check(_build(64, 48, emulate=True, residual=True), 64, 48, residual=True)


@pytest.mark.parametrize("residual", [False, True])
def test_emulated_kernel_reads_the_amx_kernels_panels(residual):
    """An AMX build's decode graphs: the same sums from amx.pack_weight's (N/16, K/2, 16, 2) panels,
    K padded to 32 there (51 -> 64) and N to 32 (70 -> 96)."""
    _check(_build(51, 70, emulate=True, residual=residual, amx_panels=True), 51, 70, residual=residual,
           pack=amx.pack_weight)


def test_native_kernel_is_built_on_vdpbf16ps(native_51x70):
    asm = native_51x70.mod.inspect_source("asm")
    mnemonics = {line.split()[0] for line in asm.splitlines() if line.strip()}
    assert "vdpbf16ps" in mnemonics
    assert not [line for line in asm.splitlines() if "call" in line and "dpbf16" in line]  # inlined


NO_DPBF16 = pytest.mark.skipif(not HAS_DPBF16, reason="this CPU has no AVX512-BF16 (avx512_bf16); the "
                                                      "emulated kernel above checks the same loops and numerics")


@NO_DPBF16
def test_native_kernel_matches_numpy(native_51x70):
    _check(native_51x70, 51, 70)


@NO_DPBF16
def test_native_kernel_reads_the_amx_kernels_panels():
    lib = _build(256, 96, emulate=False, residual=True, target=NATIVE_TARGET, amx_panels=True)
    _check(lib, 256, 96, residual=True, pack=amx.pack_weight)


@NO_DPBF16
def test_native_kernel_adds_bias_and_residual():
    _check(_build(256, 96, emulate=False, residual=True, target=NATIVE_TARGET), 256, 96, residual=True)


def _dense_gelu_module(w: np.ndarray, bias: np.ndarray, op: str):
    """Relax ``gelu(x @ w + bias)`` at a symbolic row count, as the ONNX importer writes it."""
    from tvm import relax, tirx

    x = relax.Var("x", relax.TensorType([tirx.Var("m", "int64"), w.shape[0]], "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            y = builder.emit(relax.op.add(relax.op.matmul(x, relax.const(w)), relax.const(bias)))
            out = builder.emit_output(getattr(relax.op.nn, op)(y))
        builder.emit_func_output(out)
    return builder.get()


def _check_gelu(got, a, w, bias, approximate: str) -> None:
    pre = torch.from_numpy(_torch_bf16(a) @ _torch_bf16(w) + bias)
    want = torch.nn.functional.gelu(pre, approximate=approximate).numpy()
    scale = np.abs(_torch_bf16(a)) @ np.abs(_torch_bf16(w)) + 1
    # the accumulation bound through GELU's slope (< 1.13), plus the polynomials' 5e-7
    k = w.shape[0]
    assert np.all(np.abs(got - want) <= 1.2 * 4 * k * 2.0 ** -24 * scale + 1e-6 * (1 + np.abs(want)))


@pytest.mark.parametrize("kind,approximate", [("erf", "none"), ("tanh", "tanh")])
def test_emulated_kernel_applies_gelu(kind, approximate):
    rng = np.random.default_rng(8)
    w = rng.standard_normal((51, 70)).astype(np.float32)
    bias = rng.standard_normal(70).astype(np.float32)
    lib = _build(51, 70, emulate=True, gelu=kind)
    for m in (1, 13, 29):
        a = rng.standard_normal((m, 51)).astype(np.float32)
        _check_gelu(_run(lib, a, w, bias), a, w, bias, approximate)


@pytest.mark.parametrize("op,kind", [("gelu", "erf"), ("gelu_tanh", "tanh")])
def test_gelu_after_a_dense_layer_joins_the_kernel(op, kind):
    from forgeline.compile.cpu.bf16 import bf16_dense_matmuls
    from forgeline.compile.cpu.dense_gelu import fuse_dense_gelu

    rng = np.random.default_rng(7)
    mod = _dense_gelu_module(rng.standard_normal((40, 48)).astype(np.float32),
                             rng.standard_normal(48).astype(np.float32), op)
    fused = fuse_dense_gelu(bf16_dense_matmuls(mod, emulate=True, kernel="avx512bf16"), emulate=True)
    names = sorted(gv.name_hint for gv in fused.functions)
    assert names == ["avx512bf16_dense_40x48_gelu_" + kind, "main"]  # the plain kernel is gone
    assert f"relax.nn.{op}" not in fused.script() and f"R.nn.{op}" not in fused.script()
