"""The bf16 grouped expert GEMMs (compile/cpu/bf16_moe.py) against numpy on torch-rounded bf16 inputs.

Each packed 8-row tile must come out as its expert's ``bf16(a) @ bf16(W_e) + b_e`` on its filled
rows. The emulated kernels run on every host; the native ones (AMX, ``vdpbf16ps``) where the CPU
has the instructions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forgeline.runtime.host import read_cpu_features

FEATURES = read_cpu_features()
NATIVE = {"amx": {"amx_bf16", "amx_tile"} <= FEATURES, "avx512bf16": {"avx512f", "avx512_bf16"} <= FEATURES}
TARGETS = {"amx": {"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 2},
           "avx512bf16": {"kind": "llvm", "mattr": ["+avx512f", "+avx512bw", "+avx512bf16"], "num-cores": 2}}
# (expert, filled rows) per 8-row tile, as moe_rows.pack_rows_kernel lays them out: expert 0 over
# six tiles (an AMX block boundary at tile 4), expert 2 with one small tile, expert 1 over two tiles
# that cross the boundary at tile 8, expert 3 took nothing.
TILES = np.array([[0, 8], [0, 8], [0, 8], [0, 8], [0, 8], [0, 3], [2, 5], [1, 8], [1, 2]], np.int64)
EXPERTS, K, N = 4, 40, 64


def _torch_bf16(values: np.ndarray) -> np.ndarray:
    return torch.from_numpy(values).to(torch.bfloat16).to(torch.float64).numpy()


def _case(kernel: str, emulate: bool):
    pytest.importorskip("tvm")
    if not emulate and not NATIVE[kernel]:
        pytest.skip(f"this CPU lacks the {kernel} instructions")
    import tvm

    from forgeline.compile.cpu.bf16_moe import grouped_bf16_kernel, pack_expert_weights

    if kernel == "amx" and not emulate:
        from forgeline.runtime.amx import request_amx_permission

        request_amx_permission()
    func = grouped_bf16_kernel(kernel, K, N, emulate=emulate).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(TARGETS[kernel]))
    rng = np.random.default_rng(7)
    w = rng.standard_normal((EXPERTS, K, N)).astype(np.float32)
    bias = rng.standard_normal((EXPERTS, 1, N)).astype(np.float32)
    return lib, w, bias, pack_expert_weights(w, kernel), rng


def _run(lib, packed, bias, tiles, a):
    import tvm

    out = tvm.runtime.tensor(np.full((8 * len(tiles), N), np.nan, np.float32))
    lib["main"](*(tvm.runtime.tensor(x) for x in (a, *packed, bias, tiles)), out)
    return out.numpy()


@pytest.mark.parametrize("kernel", ["amx", "avx512bf16"])
@pytest.mark.parametrize("emulate", [True, False], ids=["emulated", "native"])
def test_grouped_bf16_gemm(kernel, emulate):
    lib, w, bias, packed, rng = _case(kernel, emulate)
    a = rng.standard_normal((8 * len(TILES), K)).astype(np.float32)
    got = _run(lib, packed, bias, TILES, a)
    for t, (expert, filled) in enumerate(TILES):
        rows = slice(8 * t, 8 * t + filled)
        want = _torch_bf16(a[rows]) @ _torch_bf16(w[expert]) + bias[expert, 0]
        scale = np.abs(_torch_bf16(a[rows])) @ np.abs(_torch_bf16(w[expert])) + 1
        assert np.all(np.abs(got[rows] - want) <= 4 * K * 2.0 ** -24 * scale), (t, expert)
        # the operands were rounded to bf16: fp32's product is measurably elsewhere
        assert np.abs(got[rows] - (a[rows].astype(np.float64) @ w[expert] + bias[expert, 0])).max() > 1e-4
    # an empty block (no expert took a token): one tile, nothing filled, nothing written or read
    empty = _run(lib, packed, bias, np.zeros((1, 2), np.int64), np.zeros((8, K), np.float32))
    assert empty.shape == (8, N)
