"""The default GEMM schedule (compile/cpu/matmul.py) and weight packing, checked against numpy.

Each module embeds its weights as Relax constants, as the ONNX importer does, so the weight
packing path runs; sizes are chosen so that rows and columns are not whole tiles.
"""

from __future__ import annotations

import numpy as np
import pytest

RNG = np.random.default_rng(7)
W_DENSE = RNG.standard_normal((24, 40)).astype(np.float32)  # (K, N): N not a multiple of 32
BIAS = RNG.standard_normal(40).astype(np.float32)
W_TIED = RNG.standard_normal((48, 24)).astype(np.float32)  # (N, K), used as x @ W.T
W_EXPERTS = RNG.standard_normal((3, 24, 16)).astype(np.float32)  # (E, K, N) stacked experts


def _gelu(y):
    from math import erf, sqrt

    return y * 0.5 * (1 + np.vectorize(lambda v: erf(v / sqrt(2)))(y))


@pytest.fixture(scope="module", params=[None, 1], ids=["default-tile", "decode-rows"])
def built(request):
    """One symbolic-shape module: dense+bias+GELU, a tied (transposed) head, MoE experts; with
    the default register tile and with the one-row tile that decode graphs use."""
    import tvm
    from tvm import relax
    from tvm.script import ir as I, relax as R

    from forgeline.compile.cpu.pipeline import apply_cpu_defaults, cpu_pipeline

    @I.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor(("b", "t", 24), "float32"), g: R.Tensor(("t", 3, "b", 24), "float32"),
                 w: R.Tensor((24, 40), "float32"), bias: R.Tensor((40,), "float32"),
                 tied: R.Tensor((48, 24), "float32"), experts: R.Tensor((3, 24, 16), "float32")):
            with R.dataflow():
                dense = R.nn.gelu(R.add(R.matmul(x, w), bias))
                head = R.matmul(x, R.permute_dims(tied, [1, 0]))
                moe = R.matmul(g, experts)  # (G, E, n, K) @ (E, K, N)
                out = (dense, head, moe)
                R.output(out)
            return out

    weights = {"w": W_DENSE, "bias": BIAS, "tied": W_TIED, "experts": W_EXPERTS}
    module = relax.transform.BindParams(  # weights become embedded constants, as on import
        "main", {k: tvm.runtime.tensor(v) for k, v in weights.items()})(Module)
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    scheduled = apply_cpu_defaults(module, target, gemm_rows=request.param)
    pipeline = cpu_pipeline(target, gemm_rows=request.param)
    executable = tvm.compile(module, target=target, relax_pipeline=pipeline)
    return relax.VirtualMachine(executable, tvm.cpu()), scheduled


@pytest.mark.parametrize("batch,seq", [(1, 5), (2, 13)])
def test_gemm_schedule_matches_numpy(built, batch, seq):
    import tvm

    vm, _ = built
    x = RNG.standard_normal((batch, seq, 24)).astype(np.float32)
    g = RNG.standard_normal((seq, 3, batch, 24)).astype(np.float32)
    dense, head, experts = (t.numpy() for t in vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(g)))
    np.testing.assert_allclose(dense, _gelu(x @ W_DENSE + BIAS), atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(head, x @ W_TIED.T, atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(experts, np.einsum("genk,ekf->genf", g, W_EXPERTS), atol=1e-4, rtol=1e-3)


def test_constant_weights_are_packed_at_build_time(built):
    import tvm

    _, scheduled = built
    names = [gv.name_hint for gv, f in scheduled.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    packed = [n for n in names if n.endswith("_prepacked")]
    assert len(packed) == 3, names  # dense, tied head and experts all read packed constants
    assert not [n for n in names if n.endswith("_weight_prepack")]  # folded away, not run per call
    assert all(f.attrs.get("tirx.is_scheduled") for f in scheduled.functions.values()
               if isinstance(f, tvm.tirx.PrimFunc))


W_WIDE = RNG.standard_normal((37, 576)).astype(np.float32)  # K odd; 18 panels -> blocks of 9
W_TAIL = RNG.standard_normal((37, 200)).astype(np.float32)  # N not a multiple of 32


def _compile_wide(shape_x):
    import tvm
    from tvm import relax
    from tvm.script import ir as I, relax as R

    from forgeline.compile.cpu.pipeline import cpu_pipeline

    @I.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor(shape_x, "float32"), w: R.Tensor((37, 576), "float32"),
                 v: R.Tensor((37, 200), "float32")):
            with R.dataflow():
                out = (R.matmul(x, w), R.matmul(x, v))
                R.output(out)
            return out

    module = relax.transform.BindParams("main", {
        "w": tvm.runtime.tensor(W_WIDE), "v": tvm.runtime.tensor(W_TAIL)})(Module)
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    executable = tvm.compile(module, target=target, relax_pipeline=cpu_pipeline(target))
    return relax.VirtualMachine(executable, tvm.cpu())


@pytest.mark.parametrize("shape_x,shape", [(("b", "t", 37), (2, 13)), ((1, 13, 37), (1, 13)),
                                           ((3, 7, 37), (3, 7))], ids=["symbolic", "static-odd-m", "static-m-21"])
def test_panel_blocks_match_numpy_at_odd_shapes(shape_x, shape):
    """Column panels in L2 blocks (18 panels -> 2 blocks of 9; 200 columns -> narrower panels),
    odd K, M not a multiple of the tile height, symbolic and static M."""
    import tvm

    vm = _compile_wide(shape_x)
    x = RNG.standard_normal((*shape, 37)).astype(np.float32)
    wide, tail = (t.numpy() for t in vm["main"](tvm.runtime.tensor(x)))
    np.testing.assert_allclose(wide, x @ W_WIDE, atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(tail, x @ W_TAIL, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("mcpu,lanes", [("x86-64", 4), ("haswell", 8), ("znver3", 8),
                                        ("skylake-avx512", 16), ("znver4", 16)])
def test_vector_lanes_follow_the_isa(mcpu, lanes):
    """fp32 lanes from the ISA extensions mcpu enables (TVM's own vector width says 512 bits for
    all of these)."""
    import tvm

    from forgeline.compile.cpu.rules import vector_lanes

    assert vector_lanes(tvm.target.Target({"kind": "llvm", "mcpu": mcpu})) == lanes


@pytest.mark.parametrize("lanes", [4, 8, 16])
@pytest.mark.parametrize("m", [None, 128, 1024, 13])
def test_register_tile_fits_the_stack_limit(lanes, m):
    """TVM stack-allocates a scratch buffer only under 1 KiB; a bigger accumulator went to the
    heap and LLVM then spilled it after every FMA (the 43 vs 112 GFLOP/s bug)."""
    from tvm import tirx

    from forgeline.compile.cpu.matmul import ACCUMULATOR_BYTES, COLS_VECTORS, tile_rows

    rows = tile_rows(lanes, None if m is None else tirx.IntImm("int64", m))
    assert rows >= 4 and rows * lanes * COLS_VECTORS * 4 < ACCUMULATOR_BYTES
    assert rows * COLS_VECTORS + COLS_VECTORS + 1 <= (32 if lanes >= 16 else 16)


@pytest.mark.parametrize("m", [128, 1024, 896])
def test_static_rows_keep_the_tallest_tile(m):
    """A tuning bucket's static M = batch x 128 takes the dynamic build's 7-row AVX-512 tile (with a
    zero-padded copy of A where 7 does not divide M), not the largest divisor: 4-row tiles made
    every GEMM of the bucket builds 8-15% slower than the untuned build's."""
    from tvm import tirx

    from forgeline.compile.cpu.matmul import tile_rows

    assert tile_rows(16, tirx.IntImm("int64", m)) == tile_rows(16) == 7


@pytest.mark.parametrize("mcpu,register", [("skylake-avx512", "zmm"), ("haswell", "ymm")])
def test_symbolic_gemm_keeps_accumulators_in_registers(mcpu, register):
    """The hottest loop of a symbolic-shape GEMM (with A's zero-padded copy, which is a heap
    buffer) keeps its accumulators in registers: before the fix it stored one after every FMA;
    now only the tile's write-back stores remain. On AVX2 (16 ymm registers) the tile must be
    sized for ymm: sized for AVX-512 (TVM reports 512 bits for every x86 mcpu) its 28
    accumulators spilled after every FMA."""
    import re

    import tvm
    from tvm import relax
    from tvm.script import ir as I, relax as R

    from forgeline.compile.cpu.pipeline import cpu_pipeline

    @I.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor(("b", "t", 64), "float32"), w: R.Tensor((64, 256), "float32")):
            with R.dataflow():
                y = R.matmul(x, w)
                R.output(y)
            return y

    w = RNG.standard_normal((64, 256)).astype(np.float32)
    module = relax.transform.BindParams("main", {"w": tvm.runtime.tensor(w)})(Module)
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    executable = tvm.compile(module, target=target, relax_pipeline=cpu_pipeline(target))
    llvm = next(m for m in _modules(executable.mod) if m.kind == "llvm")
    blocks = re.split(r"\n\.LBB\S*:", llvm.inspect_source("asm"))
    hottest = max(blocks, key=lambda b: b.count("vfmadd"))
    fmas = hottest.count("vfmadd")
    stores = len(re.findall(rf"vmov\w*\s+%{register}\d+, [^%\n]*\(", hottest))
    assert fmas >= 8 and stores * 4 < fmas, hottest  # spilled: one store per FMA


def _modules(module):
    yield module
    for child in module.imports:
        yield from _modules(child)
