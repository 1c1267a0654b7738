"""fp16 CUDA builds: ToMixedPrecision casts the matmuls to fp16 with fp32 accumulation, they run
on tensor cores (wmma/mma in the generated CUDA), and softmax stays fp32."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import relax, tirx

from forgeline.compile import CompileOptions
from forgeline.compile.artifact import resolve_precision_target
from forgeline.compile.cuda.export import find_cuda_modules
from forgeline.compile.cuda.pipeline import cuda_pipeline
from forgeline.runtime.errors import ConfigError

from .conftest import cuda_target


def _matmul_softmax():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape=[tirx.Var("n", "int64"), 128, 256], dtype="float32"))
    w = relax.const(np.random.default_rng(0).standard_normal((256, 512)).astype("float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, w))  # (n, 128, 512)
            out = bb.emit_output(bb.emit(relax.op.nn.softmax(y)))
        bb.emit_func_output(out)
    return bb.get()


def _source(precision: str) -> str:
    target = cuda_target()
    executable = tvm.compile(_matmul_softmax(), target=target, relax_pipeline=cuda_pipeline(target, precision))
    return str(find_cuda_modules(executable.mod)[0].inspect_source("cuda"))


def test_fp16_matmul_uses_tensor_cores_and_fp32_stays_without():
    fp16, fp32 = _source("fp16"), _source("fp32")
    assert re.search(r"\bwmma::mma_sync\b|\bmma\.sync\b", fp16)
    assert "wmma::" not in fp32 and "mma.sync" not in fp32
    assert "half" in fp16


def test_fp16_is_for_cuda_builds_only_and_gets_its_own_tag():
    assert resolve_precision_target(CompileOptions(target="cuda", precision="fp16")).tag == "cuda-sm90-fp16"
    with pytest.raises(ConfigError, match="--target cuda only"):
        resolve_precision_target(CompileOptions(target="cpu", precision="fp16"))
    with pytest.raises(ConfigError, match="--target cpu only"):
        resolve_precision_target(CompileOptions(target="cuda", precision="bf16"))
    with pytest.raises(ConfigError, match="choose one of"):
        resolve_precision_target(CompileOptions(target="cuda", precision="int3"))
