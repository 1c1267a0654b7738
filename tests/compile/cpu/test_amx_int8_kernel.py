"""The AMX int8 GEMM (compile/cpu/amx_int8.py) against numpy's int8 arithmetic, at odd shapes.

The emulated kernel (the same loops and addresses, the tile instructions as TIR loops) runs on
every host; the AMX kernel is compiled everywhere and its instructions checked, and it runs
where the CPU has AMX-INT8.
"""

from __future__ import annotations

import numpy as np
import pytest

from forgeline.compile.cpu.amx_int8 import AMX_INT8, amx_int8_dense, pack_weight
from forgeline.runtime.host import read_cpu_features

HAS_AMX_INT8 = set(AMX_INT8.cpu_features) <= read_cpu_features()
NO_AMX = "this CPU has no AMX-INT8 (amx_int8, amx_tile); the emulated kernel checks the same loops"
AMX_TARGET = {"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 2}
K, N = 100, 70  # K not a multiple of 64 (a tile row), N not of 32 (a block)
ROWS = [1, 5, 31, 33, 70]  # around the 32-row blocks; one build serves all: m is symbolic
VARIANTS = [pytest.param(True, id="emulated"),
            pytest.param(False, id="amx", marks=pytest.mark.skipif(not HAS_AMX_INT8, reason=NO_AMX))]
_LIBS: dict = {}


def _build(emulate: bool, activation: str | None = None):
    """The kernel with the residual epilogue (or with ``activation`` and none)."""
    import tvm

    key = (emulate, activation)
    if key not in _LIBS:
        if not emulate:
            from forgeline.runtime.amx import request_amx_permission

            request_amx_permission()
        func = amx_int8_dense(K, N, residual=activation is None, emulate=emulate, activation=activation)
        _LIBS[key] = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                                 target=tvm.target.Target(AMX_TARGET))
    return _LIBS[key]


def _run(lib, a, w, bias, residual=None):
    import tvm

    out = tvm.runtime.tensor(np.full((a.shape[0], N), np.nan, np.float32))
    extra = [] if residual is None else [residual]
    lib["main"](*(tvm.runtime.tensor(x) for x in (a, *pack_weight(w), bias, *extra)), out)
    return out.numpy()


def _quantized_reference(a, w, bias):
    """Dynamic int8 quantization by hand: per-row s8 activations, per-column s8 weights."""
    w_scale = np.abs(w).max(axis=0) / np.float32(127)  # (N,)
    wq = np.clip(np.rint(w / w_scale), -127, 127).astype(np.int64)
    a_max = np.abs(a).max(axis=1, keepdims=True)  # (m, 1)
    inv = np.float32(127) / np.where(a_max > 0, a_max, np.float32(1))  # an all-zero row: codes 0
    aq = np.clip(np.rint(a * inv), -127, 127).astype(np.int64)
    return (aq @ wq).astype(np.float64) * (a_max / np.float32(127)).astype(np.float64) * w_scale + bias


def test_pack_weight_is_the_vnni4_tile_layout():
    w = np.random.default_rng(0).standard_normal((37, 21)).astype(np.float32)
    panels, scales = pack_weight(w)
    assert panels.shape == (2, 16, 64) and panels.dtype == np.int8  # N 21->32, K 37->64
    wq = np.rint(w / (np.abs(w).max(axis=0) / 127)).astype(np.int8)
    for p, kk, c in np.ndindex(panels.shape):
        k, n = 4 * kk + c % 4, 16 * p + c // 4
        assert panels[p, kk, c] == (wq[k, n] if k < 37 and n < 21 else 0)
    assert np.allclose(scales[:21], np.abs(w).max(axis=0) / 127) and not scales[21:].any()


@pytest.mark.parametrize("emulate", VARIANTS)
def test_int32_accumulation_is_exact(emulate):
    """Integer A and W reaching +-127 in every row / column: every scale is 1, outputs are the sums."""
    lib, rng = _build(emulate), np.random.default_rng(1)
    w = rng.integers(-127, 128, (K, N)).astype(np.float32)
    w[rng.integers(0, K, N), np.arange(N)] = rng.choice([-127.0, 127.0], N)
    for m in ROWS:
        a = rng.integers(-127, 128, (m, K)).astype(np.float32)
        a[np.arange(m), rng.integers(0, K, m)] = rng.choice([-127.0, 127.0], m)
        got = _run(lib, a, w, np.zeros(N, np.float32), np.zeros((m, N), np.float32))
        want = a.astype(np.int64) @ w.astype(np.int64)  # |sums| < 2^24: exact in fp32 too
        assert np.array_equal(got, want.astype(np.float32)), m


@pytest.mark.parametrize("emulate", VARIANTS)
def test_dequantized_output_with_bias_and_residual(emulate):
    lib, rng = _build(emulate), np.random.default_rng(2)
    w = rng.standard_normal((K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    for m in ROWS:
        a = rng.standard_normal((m, K)).astype(np.float32) * rng.uniform(0.1, 10, (m, 1)).astype(np.float32)
        a[0] = 0.0  # an all-zero row: scale 0, output = bias + residual
        skip = rng.standard_normal((m, N)).astype(np.float32)
        got = _run(lib, a, w, bias, skip)
        assert np.allclose(got, _quantized_reference(a, w, bias) + skip, rtol=1e-5, atol=1e-5), m
        exact = a.astype(np.float64) @ w + bias + skip  # a quantized matmul, not the fp32 one
        assert 0 < np.abs(got - exact).max() < 0.05 * np.abs(exact).max()


@pytest.mark.parametrize("op,approximate", [("relax.nn.gelu", "none"), ("relax.nn.gelu_tanh", "tanh")])
def test_gelu_epilogue(op, approximate):
    import torch

    lib, rng = _build(not HAS_AMX_INT8, op), np.random.default_rng(3)
    a, w = rng.standard_normal((37, K)).astype(np.float32), rng.standard_normal((K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    want = torch.nn.functional.gelu(torch.from_numpy(_quantized_reference(a, w, bias)), approximate=approximate)
    assert np.allclose(_run(lib, a, w, bias), want.numpy(), rtol=1e-5, atol=1e-5)


def test_kernel_object_holds_the_tile_instructions():
    lib = _build(emulate=False) if HAS_AMX_INT8 else None
    if lib is None:  # compiling needs no AMX; only running does
        import tvm

        func = amx_int8_dense(K, N).with_attr("global_symbol", "main")
        lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(AMX_TARGET))
    asm = (lib.mod if hasattr(lib, "mod") else lib).inspect_source("asm")
    mnemonics = {line.split()[0] for line in asm.splitlines() if line.strip()}
    assert {"ldtilecfg", "tilezero", "tileloadd", "tdpbssd", "tilestored", "tilerelease"} <= mnemonics
