"""The AMX bf16 GEMM (compile/cpu/amx.py) against numpy on bf16-rounded inputs, at odd shapes.

The emulated kernel (the same loops and addresses, tile instructions as TIR loops) runs on every
host; the AMX kernel is compiled everywhere and its instructions checked, and it runs where the
CPU has AMX.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forgeline.compile.cpu.amx import amx_dense, bf16_bits, bf16_round, pack_weight
from forgeline.runtime.host import read_cpu_features

HAS_AMX = {"amx_bf16", "amx_tile"} <= read_cpu_features()
AMX_TARGET = {"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 2}


def _build(k: int, n: int, *, emulate: bool, target: dict, residual: bool = False):
    import tvm

    func = amx_dense(k, n, residual=residual, emulate=emulate).with_attr("global_symbol", "main")
    return tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(target))


def _run(lib, a, w, bias, residual=None):
    import tvm

    out = tvm.runtime.tensor(np.full((a.shape[0], w.shape[1]), np.nan, np.float32))
    extra = [] if residual is None else [tvm.runtime.tensor(residual)]
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(pack_weight(w)),
                tvm.runtime.tensor(bias), *extra, out)
    return out.numpy()


def _reference(a, w, bias):
    """float64 matmul of the bf16-rounded operands: what fp32 accumulation should approach."""
    return bf16_round(a).astype(np.float64) @ bf16_round(w).astype(np.float64) + bias


def _check_shapes(lib, k: int, n: int, rows: list[int], residual: bool = False) -> None:
    rng = np.random.default_rng(k * 1000 + n)
    w = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    for m in rows:  # one build serves every row count: m is symbolic
        a = rng.standard_normal((m, k)).astype(np.float32)
        skip = rng.standard_normal((m, n)).astype(np.float32) if residual else None
        got = _run(lib, a, w, bias, skip)
        want = _reference(a, w, bias) + (0 if skip is None else skip)
        # fp32 accumulation of k exact bf16 products: error ~ k * 2^-24 * sum|a w|
        scale = np.abs(bf16_round(a)).astype(np.float64) @ np.abs(bf16_round(w)) + 1
        assert np.all(np.abs(got - want) <= 4 * k * 2.0 ** -24 * scale), (m, k, n)


def test_bf16_rounding_matches_torch():
    values = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 100
    values[:4] = [0.0, -0.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8]  # ties round to even
    want = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(bf16_bits(values), want)


def test_pack_weight_layout():
    w = np.random.default_rng(1).standard_normal((37, 21)).astype(np.float32)
    packed = pack_weight(w)
    assert packed.shape == (2, 32, 16, 2) and packed.dtype == np.uint16  # N 21->32, K 37->64
    bits = bf16_bits(w)
    for p, kk, j, e in np.ndindex(packed.shape):
        k, n = 2 * kk + e, 16 * p + j
        assert packed[p, kk, j, e] == (bits[k, n] if k < 37 and n < 21 else 0)


@pytest.mark.parametrize("k,n", [(50, 70), (32, 32), (1, 5), (96, 40)])
def test_emulated_kernel_matches_numpy(k, n):
    lib = _build(k, n, emulate=True, target={"kind": "llvm", "num-cores": 2})
    _check_shapes(lib, k, n, rows=[1, 16, 31, 32, 37, 70, 200])  # 200: two row chunks


def test_emulated_kernel_runs_every_task_of_a_partial_group():
    """200 rows x 35 panel pairs are 70 tasks, run in groups of 4: the last group holds 2."""
    lib = _build(64, 1100, emulate=True, target={"kind": "llvm", "num-cores": 2})
    _check_shapes(lib, 64, 1100, rows=[200, 129])


def test_emulated_kernel_adds_the_residual():
    lib = _build(40, 48, emulate=True, target={"kind": "llvm", "num-cores": 2}, residual=True)
    _check_shapes(lib, 40, 48, rows=[5, 33], residual=True)


def test_amx_kernel_uses_tile_instructions():
    lib = _build(50, 70, emulate=False, target=AMX_TARGET)
    asm = (lib.mod if hasattr(lib, "mod") else lib).inspect_source("asm")
    mnemonics = {line.split()[0] for line in asm.splitlines() if line.strip()}
    assert {"ldtilecfg", "tilezero", "tileloadd", "tdpbf16ps", "tilestored",
            "tilerelease"} <= mnemonics


@pytest.mark.skipif(not HAS_AMX, reason="this CPU has no AMX (amx_bf16, amx_tile); the emulated "
                                        "kernel above checks the same loops")
@pytest.mark.parametrize("k,n", [(50, 70), (256, 1024)])
def test_amx_kernel_matches_numpy(k, n):
    from forgeline.runtime.amx import request_amx_permission

    request_amx_permission()
    lib = _build(k, n, emulate=False, target=AMX_TARGET)
    _check_shapes(lib, k, n, rows=[1, 31, 37, 128])


@pytest.mark.parametrize("op,approximate", [("relax.nn.gelu", "none"), ("relax.nn.gelu_tanh", "tanh")])
def test_emulated_kernel_applies_gelu(op, approximate):
    import tvm

    k, n = 40, 48
    func = amx_dense(k, n, emulate=True, activation=op).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target({"kind": "llvm", "num-cores": 2}))
    rng = np.random.default_rng(9)
    w = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    for m in (3, 33):  # an edge block (scratch) and a whole one (in place)
        a = rng.standard_normal((m, k)).astype(np.float32)
        pre = torch.from_numpy(_reference(a, w, bias))
        want = torch.nn.functional.gelu(pre, approximate=approximate).numpy()
        scale = np.abs(bf16_round(a)).astype(np.float64) @ np.abs(bf16_round(w)) + 1
        # the accumulation bound through GELU's slope (< 1.13), plus the polynomials' 5e-7
        bound = 1.2 * 4 * k * 2.0 ** -24 * scale + 1e-6 * (1 + np.abs(want))
        assert np.all(np.abs(_run(lib, a, w, bias) - want) <= bound), m


@pytest.mark.parametrize("op", ["gelu", "gelu_tanh"])
def test_gelu_after_a_dense_layer_joins_the_amx_kernel(op):
    from tvm import relax, tirx

    from forgeline.compile.cpu.bf16 import bf16_dense_matmuls

    rng = np.random.default_rng(7)
    x = relax.Var("x", relax.TensorType([tirx.Var("m", "int64"), 40], "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            w, bias = rng.standard_normal((40, 48)), rng.standard_normal(48)
            y = builder.emit(relax.op.add(relax.op.matmul(x, relax.const(w.astype(np.float32))),
                                          relax.const(bias.astype(np.float32))))
            out = builder.emit_output(getattr(relax.op.nn, op)(y))
        builder.emit_func_output(out)
    fused = bf16_dense_matmuls(builder.get(), emulate=True, kernel="amx")
    assert sorted(gv.name_hint for gv in fused.functions) == [f"amx_dense_40x48_{op}", "main"]
    assert f"R.nn.{op}" not in fused.script()
