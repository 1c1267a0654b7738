"""The fused attention kernel (compile/cpu/attention.py) against numpy's softmax(QKᵀ·scale + mask)·V
in float64, alone and after ``fuse_attention`` rewrote the importer's multi-head pattern."""

from __future__ import annotations

import numpy as np
import pytest
from tvm.script import tirx as T  # noqa: N812 - TVMScript's name for symbolic sizes

RNG = np.random.default_rng(11)
LOWEST = np.finfo(np.float32).min  # what the exported BERT mask adds at padded keys


def _reference(q, k, v, scale, mask):
    """(B, Tq, H, D) from Q (B, Tq, H, D), K and V (B, Tk, H, D) and a mask broadcast to (B, H, Tq, Tk)."""
    q, k, v = (x.astype(np.float64).transpose(0, 2, 1, 3) for x in (q, k, v))
    scores = q @ k.transpose(0, 1, 3, 2) * scale + (0 if mask is None else mask)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True) @ v).transpose(0, 2, 1, 3)


def _run_kernel(shape, xq, xk, xv, mask, out_shape):
    import tvm

    from forgeline.compile.cpu.attention import attention_kernel

    func = attention_kernel(shape).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target({"kind": "llvm", "num-cores": 2}))
    out = tvm.runtime.tensor(np.full(out_shape, np.nan, np.float32))
    args = [tvm.runtime.tensor(x) for x in (xq, xk, xv)] + ([] if mask is None else [tvm.runtime.tensor(mask)])
    lib["main"](*args, out)
    return out.numpy()


@pytest.mark.parametrize("batch,seq,heads,dim,mask_kind", [
    (1, 128, 4, 64, "causal"),  # gpt-small's layer
    (2, 37, 2, 16, "padding"),  # bert-tiny's, a length off the key blocks
    (3, 5, 3, 32, "none"),  # shorter than one block of queries or keys
    (2, 70, 1, 8, "per-head"),  # a (B, H, T, T) mask
])
def test_kernel_reads_q_k_v_from_one_tensor(batch, seq, heads, dim, mask_kind):
    from forgeline.compile.cpu.attention import AttentionShape

    x = RNG.standard_normal((batch, seq, 3 * heads, dim)).astype(np.float32)
    mask = {
        "causal": np.triu(np.full((seq, seq), -1e9, np.float32), 1)[None, None],
        "padding": np.where(RNG.random((batch, 1, 1, seq)) < 0.3, LOWEST, 0).astype(np.float32),
        "none": None,
        "per-head": RNG.standard_normal((batch, heads, seq, seq)).astype(np.float32),
    }[mask_kind]
    shape = AttentionShape(heads=heads, head_dim=dim, q_heads=3 * heads, k_heads=3 * heads, v_heads=3 * heads,
                           q_first=0, k_first=heads, v_first=2 * heads, scale=dim ** -0.5, masked=mask is not None)
    got = _run_kernel(shape, x, x, x, mask, (batch, seq, heads, dim))
    want = _reference(x[:, :, :heads], x[:, :, heads:2 * heads], x[:, :, 2 * heads:], dim ** -0.5, mask)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("seq", [1, 5, 33, 128])
def test_causal_kernel_skips_only_keys_of_weight_zero(seq):
    """With a causal table the kernel computes keys up to each block of queries only; the keys it
    skips are those the mask gives weight 0, so it matches the full computation."""
    from forgeline.compile.cpu.attention import AttentionShape

    x = RNG.standard_normal((2, seq, 6, 16)).astype(np.float32)
    mask = np.triu(np.full((seq, seq), -1e9, np.float32), 1)[None, None]
    shape = AttentionShape(heads=2, head_dim=16, q_heads=6, k_heads=6, v_heads=6, q_first=0, k_first=2,
                           v_first=4, scale=0.25, masked=True, causal=True)
    got = _run_kernel(shape, x, x, x, mask, (2, seq, 2, 16))
    want = _reference(x[:, :, :2], x[:, :, 2:4], x[:, :, 4:], 0.25, mask)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("lanes", [8, 4])
def test_kernel_with_avx2_and_sse_register_tiles(lanes):
    """Tiles sized for narrower SIMD (key blocks of 16, one P V row at a time) compute the same."""
    from forgeline.compile.cpu.attention import AttentionShape

    x = RNG.standard_normal((2, 45, 6, 64)).astype(np.float32)
    mask = np.triu(np.full((45, 45), -1e9, np.float32), 1)[None, None]
    shape = AttentionShape(heads=2, head_dim=64, q_heads=6, k_heads=6, v_heads=6, q_first=0, k_first=2,
                           v_first=4, scale=0.125, masked=True, causal=True, lanes=lanes)
    assert shape.key_block == 16 and shape.pv_rows == 1
    got = _run_kernel(shape, x, x, x, mask, (2, 45, 2, 64))
    np.testing.assert_allclose(got, _reference(x[:, :, :2], x[:, :, 2:4], x[:, :, 4:], 0.125, mask),
                               atol=2e-6, rtol=1e-5)


def test_kernel_with_more_keys_than_queries():
    """Cross-attention: Q from one tensor, K and V from another, other lengths."""
    from forgeline.compile.cpu.attention import AttentionShape

    q = RNG.standard_normal((2, 9, 2, 32)).astype(np.float32)
    kv = RNG.standard_normal((2, 41, 4, 32)).astype(np.float32)
    mask = np.where(RNG.random((2, 1, 1, 41)) < 0.2, LOWEST, 0).astype(np.float32)
    shape = AttentionShape(heads=2, head_dim=32, q_heads=2, k_heads=4, v_heads=4, q_first=0, k_first=0,
                           v_first=2, scale=0.2, masked=True)
    got = _run_kernel(shape, q, kv, kv, mask, (2, 9, 2, 32))
    np.testing.assert_allclose(got, _reference(q, kv[:, :, :2], kv[:, :, 2:], 0.2, mask), atol=2e-6, rtol=1e-5)


def _importer_module(mask_shape=("b", 1, 1, "t")):
    """Multi-head attention as the ONNX importer writes it after combine_parallel_dense."""
    from tvm.script import ir as I, relax as R

    heads, kv_heads, dim = 2, 2, 16
    total = heads + 2 * kv_heads

    if mask_shape is None:
        return _unmasked_module(heads, kv_heads, dim)

    @I.ir_module
    class Masked:
        @R.function
        def main(x: R.Tensor(("b", "t", total, dim), "float32"), mask: R.Tensor(mask_shape, "float32")):
            with R.dataflow():
                q = R.permute_dims(R.strided_slice(x, (2,), (0,), (heads,)), [0, 2, 1, 3])
                k = R.permute_dims(R.strided_slice(x, (2,), (heads,), (heads + kv_heads,)), [0, 2, 3, 1])
                v = R.permute_dims(R.strided_slice(x, (2,), (heads + kv_heads,), (total,)), [0, 2, 1, 3])
                scores = R.add(R.multiply(R.matmul(q, k), R.const(0.25, "float32")), mask)
                out = R.permute_dims(R.matmul(R.nn.softmax(scores, axis=-1), v), [0, 2, 1, 3])
                R.output(out)
            return out

    return Masked


def _unmasked_module(heads: int, kv_heads: int, dim: int):
    """The same attention without a mask, its scale a division."""
    from tvm.script import ir as I, relax as R

    total = heads + 2 * kv_heads

    @I.ir_module
    class Unmasked:
        @R.function
        def main(x: R.Tensor(("b", "t", total, dim), "float32")):
            with R.dataflow():
                q = R.permute_dims(R.strided_slice(x, (2,), (0,), (heads,)), [0, 2, 1, 3])
                k = R.permute_dims(R.strided_slice(x, (2,), (heads,), (heads + kv_heads,)), [0, 2, 3, 1])
                v = R.permute_dims(R.strided_slice(x, (2,), (heads + kv_heads,), (total,)), [0, 2, 1, 3])
                scores = R.divide(R.matmul(q, k), R.const(4.0, "float32"))
                out = R.permute_dims(R.matmul(R.nn.softmax(scores, axis=-1), v), [0, 2, 1, 3])
                R.output(out)
            return out

    return Unmasked


def _build(module):
    import tvm
    from tvm import relax

    from forgeline.compile.cpu.pipeline import apply_cpu_defaults, cpu_pipeline

    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    names = [gv.name_hint for gv in apply_cpu_defaults(module, target).get_global_vars()]
    executable = tvm.compile(module, target=target, relax_pipeline=cpu_pipeline(target))
    return names, relax.VirtualMachine(executable, tvm.cpu())


@pytest.mark.parametrize("batch,seq,masked", [(1, 7, True), (3, 40, True), (2, 19, False)])
def test_importer_pattern_runs_fused_and_matches_numpy(batch, seq, masked):
    import tvm

    names, vm = _build(_importer_module(("b", 1, 1, "t") if masked else None))
    assert any(n.startswith("fused_attention") for n in names)
    assert not any("softmax" in n for n in names)  # the whole core is one kernel
    x = RNG.standard_normal((batch, seq, 6, 16)).astype(np.float32)
    mask = np.where(RNG.random((batch, 1, 1, seq)) < 0.3, LOWEST, 0).astype(np.float32)
    mask[:, :, :, 0] = 0  # every row keeps a key
    args = [tvm.runtime.tensor(x)] + ([tvm.runtime.tensor(mask)] if masked else [])
    got = vm["main"](*args).numpy()
    want = _reference(x[:, :, :2], x[:, :, 2:4], x[:, :, 4:], 0.25, mask if masked else None)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)


def test_a_mask_broadcast_along_the_keys_keeps_the_separate_kernels():
    from forgeline.compile.cpu.attention import fuse_attention

    fused = fuse_attention(_importer_module(mask_shape=("b", 1, "t", 1)))
    assert not any(gv.name_hint.startswith("fused_attention") for gv in fused.get_global_vars())


@pytest.mark.parametrize("table,causal", [
    (np.triu(np.full((16, 16), -1e9, np.float32), 1), True),  # GPT's causal bias
    (np.triu(np.full((16, 16), -1e9, np.float32), 2), False),  # one key past the diagonal is live
    (np.triu(np.full((16, 16), -1e3, np.float32), 1), False),  # too mild to give weight 0
])
def test_only_a_causal_table_skips_keys(table, causal):
    from tvm import relax
    from tvm.script import ir as I, relax as R

    from forgeline.compile.cpu.attention import _is_causal_table

    @I.ir_module
    class Module:
        @R.function
        def main(n: R.Shape(["t"])):
            t = T.int64()
            with R.dataflow():
                rows = R.strided_slice(R.const(table), (0,), (0,), (t,))
                mask = R.strided_slice(rows, (1,), (0,), (t,))
                R.output(mask)
            return mask

    func = Module["main"]
    mask = func.body.blocks[0].bindings[-1].var
    assert _is_causal_table(mask, relax.analysis.get_var2val(func)) is causal
