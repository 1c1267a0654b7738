"""Embedding rows read back from each reduced-precision kernel's packed weight (packed_rows.py)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from forgeline.compile.cpu import amx, amx_int8, dpbf16, int8  # noqa: E402
from forgeline.compile.cpu.packed_rows import (amx_bf16_element, bf16_residual, dpbf16_element,  # noqa: E402
                                               int8_element, rows_kernel, with_residual)

K, N = 20, 37  # neither a whole panel nor a whole k step: the padding must not leak into the rows
IDS = np.array([0, 36, 5, 17, 16, 31, 32, 5], np.int64)  # panel edges, repeats, the last row


def _weight() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((K, N)).astype(np.float32)  # (K, N): the head's W


def _bf16_rows(weight):
    """Rows of W.T rounded to bf16 by torch (round to nearest even), as fp32."""
    return torch.from_numpy(np.ascontiguousarray(weight.T)).to(torch.bfloat16).float().numpy()[IDS]


def _int8_rows(weight, weight_max):
    """Rows of W.T after symmetric per-column quantization, by hand: code * max|column| / weight_max."""
    scale = np.abs(weight).max(axis=0) / weight_max  # (N,)
    codes = np.clip(np.rint(weight / scale), -weight_max, weight_max)
    return (codes * scale).T[IDS]


def _read(operands, element):
    import tvm

    types = [(op.shape, str(op.dtype)) for op in operands]
    func = rows_kernel(types, K, N, element).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    out = tvm.runtime.tensor(np.zeros((len(IDS), K), np.float32))
    lib["main"](*(tvm.runtime.tensor(op) for op in operands), tvm.runtime.tensor(IDS), out)
    return out.numpy()


CASES = {
    "amx-bf16": (lambda w: [amx.pack_weight(w)], amx_bf16_element, _bf16_rows),
    "avx512bf16": (lambda w: [dpbf16.pack_weight(w)], dpbf16_element, _bf16_rows),
    "int8-vnni": (lambda w: list(int8.pack_weight(w, int8.VNNI))[:2], int8_element(16),
                  lambda w: _int8_rows(w, 127)),
    "int8-avx2": (lambda w: list(int8.pack_weight(w, int8.AVX2))[:2], int8_element(8),
                  lambda w: _int8_rows(w, 63)),
    "int8-amx": (lambda w: list(amx_int8.pack_weight(w)), int8_element(16), lambda w: _int8_rows(w, 127)),
}


@pytest.mark.parametrize("layout", sorted(CASES))
def test_rows_read_from_the_packed_head_equal_the_rounded_table(layout):
    pack, element, expected = CASES[layout]
    weight = _weight()
    got = _read(pack(weight), element)
    np.testing.assert_allclose(got, expected(weight), rtol=1e-6, atol=1e-7)
    assert not np.array_equal(got, weight.T[IDS])  # the precision's rounding is really there


@pytest.mark.parametrize("layout", ["amx-bf16", "avx512bf16"])
def test_bf16_rows_with_the_residual_keep_the_fp32_table(layout):
    """hi (the head's bf16 panels) + lo (bf16 of what hi lost) holds about 16 significant bits."""
    pack, element, rounded = CASES[layout]
    weight = _weight()
    table = np.ascontiguousarray(weight.T)  # (N, K): the embedding E
    hi = torch.from_numpy(table).to(torch.bfloat16).float()
    lo = (torch.from_numpy(table) - hi).to(torch.bfloat16)  # torch's own rounding of the residual
    np.testing.assert_array_equal(bf16_residual(table), lo.view(torch.int16).numpy().view(np.uint16))
    got = _read([*pack(weight), bf16_residual(table)], with_residual(element))
    np.testing.assert_array_equal(got, (hi + lo.float()).numpy()[IDS])
    np.testing.assert_allclose(got, table[IDS], rtol=2.0 ** -15, atol=0)
    assert np.abs(got - table[IDS]).max() < np.abs(rounded(weight) - table[IDS]).max() / 100


def test_ids_past_the_table_are_clamped_not_read_out_of_bounds():
    weight = _weight()
    ids = np.array([-4, N + 100], np.int64)
    import tvm

    operands = [amx.pack_weight(weight)]
    func = rows_kernel([(operands[0].shape, "uint16")], K, N, amx_bf16_element).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    out = tvm.runtime.tensor(np.zeros((2, K), np.float32))
    lib["main"](tvm.runtime.tensor(operands[0]), tvm.runtime.tensor(ids), out)
    want = torch.from_numpy(np.ascontiguousarray(weight.T)).to(torch.bfloat16).float().numpy()[[0, N - 1]]
    np.testing.assert_array_equal(out.numpy(), want)
