"""The int8 GEMM (compile/cpu/int8.py) against numpy's int8 arithmetic, at odd shapes.

The emulated kernels (the same loops and addresses, the dot instructions as TIR loops) run on
every host; the VNNI and AVX2 kernels run where the CPU has the instruction, and their objects
are checked for it everywhere.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from forgeline.compile.cpu.int8 import AVX2, AVX_VNNI, VNNI, int8_dense, pack_weight
from forgeline.runtime.host import read_cpu_features

FEATURES = read_cpu_features()
ISAS = {"vnni": VNNI, "avxvnni": AVX_VNNI, "avx2": AVX2}
NATIVE = {name: set(isa.cpu_features) <= FEATURES for name, isa in ISAS.items()}
MCPU = {"vnni": "cascadelake", "avxvnni": "alderlake", "avx2": "haswell"}  # the first CPU with each
K, N = 100, 70  # K not a multiple of 16 (the pre-pass's runs), N not of 32 (a panel pair)
ROWS = [1, 5, 13, 30]  # around the 7- and 4-row tiles; one build serves all: m is symbolic
VARIANTS = [pytest.param("vnni", True, id="vnni-emulated"), pytest.param("avx2", True, id="avx2-emulated"),
            pytest.param("avxvnni", True, id="avxvnni-emulated"),
            pytest.param("vnni", False, id="vnni", marks=pytest.mark.skipif(
                not NATIVE["vnni"], reason="this CPU has no AVX512-VNNI (avx512_vnni)")),
            pytest.param("avxvnni", False, id="avxvnni", marks=pytest.mark.skipif(
                not NATIVE["avxvnni"], reason="this CPU has no AVX-VNNI (avx_vnni)")),
            pytest.param("avx2", False, id="avx2", marks=pytest.mark.skipif(
                not NATIVE["avx2"], reason="this CPU has no AVX2"))]
_LIBS: dict = {}


def _build(isa: str, emulate: bool):
    """The kernel with the residual epilogue (the other tests pass a zero residual)."""
    import tvm

    key = (isa, emulate)
    if key not in _LIBS:
        func = int8_dense(K, N, ISAS[isa], residual=True, emulate=emulate).with_attr("global_symbol", "main")
        target = tvm.target.Target({"kind": "llvm", "mcpu": MCPU[isa], "num-cores": 2})
        _LIBS[key] = tvm.compile(tvm.IRModule({"main": func}), target=target)
    return _LIBS[key]


def _run(lib, a, operands, bias, residual=None):
    import tvm

    out = tvm.runtime.tensor(np.full((a.shape[0], N), np.nan, np.float32))
    residual = np.zeros((a.shape[0], N), np.float32) if residual is None else residual
    lib["main"](*(tvm.runtime.tensor(x) for x in (a, *operands, bias, residual)), out)
    return out.numpy()


def _quantized_reference(a, w, bias, weight_max: int):
    """Dynamic int8 quantization by hand: per-row u8-shifted activations, per-column weights."""
    w_scale = np.abs(w).max(axis=0) / np.float32(weight_max)  # (N,)
    wq = np.clip(np.rint(w / w_scale), -weight_max, weight_max).astype(np.int64)
    a_max = np.abs(a).max(axis=1, keepdims=True)  # (m, 1)
    inv = np.float32(127) / np.where(a_max > 0, a_max, np.float32(1))  # an all-zero row: codes 0
    aq = np.clip(np.rint(a * inv), -127, 127).astype(np.int64)
    acc = (aq + 128) @ wq - 128 * wq.sum(axis=0)  # the u8 product minus its compensation
    return acc.astype(np.float64) * (a_max / np.float32(127)).astype(np.float64) * w_scale + bias


def _integer_operands(rng, m: int, weight_max: int):
    """Integer-valued A and W whose rows / columns reach 127 / weight_max: every scale is 1.0."""
    a = rng.integers(-127, 128, (m, K)).astype(np.float32)
    a[np.arange(m), rng.integers(0, K, m)] = rng.choice([-127.0, 127.0], m)
    w = rng.integers(-weight_max, weight_max + 1, (K, N)).astype(np.float32)
    w[rng.integers(0, K, N), np.arange(N)] = rng.choice([-weight_max, weight_max], N)
    return a, w


@pytest.mark.parametrize("isa,emulate", VARIANTS)
def test_int32_accumulation_is_exact(isa, emulate):
    lib, rng = _build(isa, emulate), np.random.default_rng(1)
    for m in ROWS:
        a, w = _integer_operands(rng, m, ISAS[isa].weight_max)
        a[-1] = np.clip(a[-1], -126, 126)
        a[-1, :K // 2] += np.float32(0.5) * np.sign(a[-1, :K // 2])  # ties: round half to even
        a[-1, -1] = 127  # its scale stays 1
        got = _run(lib, a, pack_weight(w, ISAS[isa]), np.zeros(N, np.float32))
        want = np.rint(a).astype(np.int64) @ w.astype(np.int64)  # |sums| < 2^24: exact in fp32 too
        assert np.array_equal(got, want.astype(np.float32)), m


@pytest.mark.parametrize("isa,emulate", VARIANTS)
def test_dequantized_output_with_bias_and_residual(isa, emulate):
    lib, rng = _build(isa, emulate), np.random.default_rng(2)
    w = rng.standard_normal((K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    for m in ROWS:
        a = rng.standard_normal((m, K)).astype(np.float32) * rng.uniform(0.1, 10, (m, 1)).astype(np.float32)
        a[0] = 0.0  # an all-zero row: scale 0, output = bias + residual
        skip = rng.standard_normal((m, N)).astype(np.float32)
        got = _run(lib, a, pack_weight(w, ISAS[isa]), bias, skip)
        want = _quantized_reference(a, w, bias, ISAS[isa].weight_max) + skip
        assert np.allclose(got, want, rtol=1e-5, atol=1e-5), m
        # and it is a quantized matmul: within int8's error of the fp32 one, not equal to it
        exact = a.astype(np.float64) @ w + bias + skip
        assert 0 < np.abs(got - exact).max() < 0.05 * np.abs(exact).max()


@pytest.mark.parametrize("emulate", [
    pytest.param(True, id="emulated"),
    pytest.param(False, id="native", marks=pytest.mark.skipif(not NATIVE["avx2"], reason="this CPU has no AVX2"))])
def test_avx2_pair_sums_saturate_without_7_bit_weights(emulate):
    """vpmaddubsw saturates u8 x s8 pair sums at int16: what 7-bit weights avoid (int8_dots.py)."""
    lib, rng = _build("avx2", emulate), np.random.default_rng(3)
    a, w = _integer_operands(rng, 5, 127)
    a[:] = 127.0  # u8 codes 255
    w[:] = 127.0  # full 8-bit weights, packed as the kernel reads them
    operands = pack_weight(w, AVX2)  # quantizes to 63 (scale 127/63): repack the raw codes
    panels = np.full_like(operands[0], 127)
    comp = np.full_like(operands[2], 128 * 127 * K)
    got = _run(lib, a, (panels, np.ones_like(operands[1]), comp), np.zeros(N, np.float32))
    pairs = K // 2  # each pair of 255 * 127 saturates to 32767
    assert np.all(got == pairs * 32767 - 128 * 127 * K)
    assert not np.all(got == 127 * 127 * K)  # what exact arithmetic gives


@pytest.mark.parametrize("isa,mnemonics", [("vnni", ["vpdpbusd %zmm"]), ("avxvnni", ["{vex} vpdpbusd %ymm"]),
                                            ("avx2", ["vpmaddubsw", "vpmaddwd"])])
def test_kernel_object_holds_the_instruction(isa, mnemonics, tmp_path):
    path = tmp_path / f"{isa}.so"
    _build(isa, emulate=False).export_library(str(path))
    disassembly = subprocess.run(["objdump", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    for mnemonic in mnemonics:
        assert mnemonic in disassembly


@pytest.mark.parametrize("op,approximate", [("relax.nn.gelu", "none"), ("relax.nn.gelu_tanh", "tanh")])
def test_gelu_epilogue(op, approximate):
    """An FFN's first layer: GELU applied to the dequantized output as the tile is written."""
    import torch
    import tvm

    isa = "vnni" if NATIVE["vnni"] else "avx2"
    func = int8_dense(K, N, ISAS[isa], activation=op, emulate=not NATIVE[isa]).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target({"kind": "llvm", "mcpu": MCPU[isa]}))
    rng = np.random.default_rng(4)
    a, w = rng.standard_normal((13, K)).astype(np.float32), rng.standard_normal((K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    out = tvm.runtime.tensor(np.full((13, N), np.nan, np.float32))
    lib["main"](*(tvm.runtime.tensor(x) for x in (a, *pack_weight(w, ISAS[isa]), bias)), out)
    pre = torch.from_numpy(_quantized_reference(a, w, bias, ISAS[isa].weight_max))
    want = torch.nn.functional.gelu(pre, approximate=approximate).numpy()
    assert np.allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("emulate", [
    pytest.param(True, id="emulated"),
    pytest.param(False, id="native", marks=pytest.mark.skipif(not NATIVE["vnni"], reason="this CPU has no AVX512-VNNI"))])
def test_grouped_expert_gemm(emulate):
    """MoE experts (int8_moe.py): each 8-row tile on its expert's weights, filled rows only."""
    import tvm

    from forgeline.compile.cpu.int8_moe import grouped_int8_kernel, pack_expert_weights

    experts, k, n = 3, 40, 64
    func = grouped_int8_kernel(k, n, VNNI, emulate=emulate).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target({"kind": "llvm", "mcpu": MCPU["vnni"]}))
    rng = np.random.default_rng(5)
    w = rng.standard_normal((experts, k, n)).astype(np.float32)
    bias = rng.standard_normal((experts, 1, n)).astype(np.float32)
    tiles = np.array([[0, 8], [0, 3], [2, 5], [1, 1]], np.int64)  # (expert, filled rows) per tile
    a = rng.standard_normal((8 * len(tiles), k)).astype(np.float32)
    out = tvm.runtime.tensor(np.full((8 * len(tiles), n), np.nan, np.float32))
    lib["main"](*(tvm.runtime.tensor(x) for x in (a, *pack_expert_weights(w, VNNI), bias, tiles)), out)
    for t, (expert, filled) in enumerate(tiles):
        rows = slice(8 * t, 8 * t + filled)
        want = _quantized_reference(a[rows], w[expert], bias[expert, 0], VNNI.weight_max)
        assert np.allclose(out.numpy()[rows], want, rtol=1e-5, atol=1e-5), t
