"""Attention's batched matmuls with bf16 operands (CompileOptions.attention_precision="reduced"):
the rewrite takes only matmuls of two runtime operands, computes bf16-rounded products with fp32
sums, and a reduced-precision build with it still matches eager fp32 within its tolerance."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from forgeline.compile import CompileOptions, compile_artifact
from forgeline.compile.artifact import resolve_precision_plan
from forgeline.runtime.errors import ConfigError
from forgeline.runtime.format import PRECISION_TOLERANCE
from forgeline.runtime.host import read_cpu_features


def _bf16_rounded(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 (round to nearest even) -> fp32, by hand on the bits."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def _compiled(mod):
    import tvm
    from tvm.target import Target

    from forgeline.compile.cpu.pipeline import cpu_pipeline

    target = Target({"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 2})
    return tvm.relax.VirtualMachine(tvm.compile(mod, target=target, relax_pipeline=cpu_pipeline(target)), tvm.cpu())


def test_batched_matmul_takes_bf16_operands_and_sums_in_fp32():
    import tvm
    from tvm import relax

    from forgeline.compile.cpu.attention_bf16 import bf16_attention_matmuls

    bb = relax.BlockBuilder()
    q = relax.Var("q", relax.TensorType((2, 4, 9, 16), "float32"))  # (B, nh, T, hs)
    k = relax.Var("k", relax.TensorType((2, 4, 16, 9), "float32"))  # (B, nh, hs, T)
    w = relax.const(np.ones((9, 3), np.float32))  # a dense layer's constant weight: left alone
    with bb.function("main", [q, k]):
        scores = bb.emit(relax.op.matmul(q, k))  # (B, nh, T, T)
        out = bb.emit(relax.op.matmul(scores, w))  # (B, nh, T, 3)
        bb.emit_func_output(relax.Tuple([scores, out]))
    mod = bf16_attention_matmuls(bb.get())
    assert str(mod).count('R.astype') == 2  # both operands of the batched matmul, not the dense one
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 4, 9, 16), np.float32), rng.standard_normal((2, 4, 16, 9), np.float32)
    got = _compiled(mod)["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b))
    scores = got[0].numpy()
    want = _bf16_rounded(a).astype(np.float64) @ _bf16_rounded(b).astype(np.float64)
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-5)  # exact products, fp32 sums
    assert np.abs(scores - a.astype(np.float64) @ b).max() > 1e-3  # and not fp32's operands
    np.testing.assert_allclose(got[1].numpy(), scores.sum(-1, keepdims=True).repeat(3, -1), rtol=1e-5, atol=1e-4)


def test_attention_precision_needs_a_reduced_build():
    with pytest.raises(ConfigError, match="applies to --precision bf16 or int8"):
        resolve_precision_plan(CompileOptions(attention_precision="reduced"))
    with pytest.raises(ConfigError, match="not one of fp32, reduced"):
        resolve_precision_plan(CompileOptions(precision="int8", attention_precision="bf16"))


@pytest.mark.skipif("avx2" not in read_cpu_features(), reason="int8 needs AVX2 (or AVX512-VNNI) on this CPU")
def test_int8_build_with_bf16_attention_matches_eager_fp32(tiny_artifact, tmp_path):
    root = tmp_path / "gpt"
    shutil.copytree(tiny_artifact("gpt"), root)
    manifest = compile_artifact(root, CompileOptions(precision="int8", attention_precision="reduced"))
    (tag,) = [t for t in manifest.builds if t.endswith("-int8-attnbf16")]
    build = manifest.builds[tag]
    assert build.precision == "int8" and "Attention's batched matmuls take bf16" in build.note
    stage = manifest.stages[f"tvm/{tag}"]  # the golden cases' eager fp32 outputs
    assert stage.passed and stage.tolerance == PRECISION_TOLERANCE["int8"]
