"""ONNX -> TVM builds: a dynamic-shape CPU build checked against eager torch, and the CUDA build
that must succeed on a machine without a GPU and say honestly what it produced."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from forgeline.compile.targets import resolve_target
from forgeline.compile.tvm_build import build_tvm
from forgeline.runtime.errors import CompileError



class TinyBlock(torch.nn.Module):
    """Linear -> GELU -> LayerNorm, then a matmul with a learned matrix; two outputs."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 32)
        self.norm = torch.nn.LayerNorm(32)
        self.out = torch.nn.Parameter(torch.randn(32, 8) / 8)

    def forward(self, x):  # x: (B, T, 16)
        h = self.norm(torch.nn.functional.gelu(self.proj(x)))  # (B, T, 32)
        return h @ self.out, h.mean(-1)  # (B, T, 8), (B, T)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyBlock().eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=256)
    torch.onnx.export(model, (torch.randn(2, 5, 16),), str(path), dynamo=True,
                      dynamic_shapes={"x": {0: batch, 1: seq}}, input_names=["x"],
                      output_names=["y", "m"])
    return model, path


def test_cpu_build_runs_two_shapes_from_one_library(tiny_onnx, tmp_path):
    from forgeline.runtime.backends.tvm import TvmExecutor

    model, onnx_path = tiny_onnx
    result = build_tvm(onnx_path, resolve_target("cpu"), tmp_path)
    assert not result.codegen_only and result.seconds > 0
    assert (tmp_path / result.lib_file).is_file()
    executor = TvmExecutor(tmp_path / result.lib_file)
    rng = np.random.default_rng(0)
    for shape in [(1, 7, 16), (3, 19, 16)]:
        x = rng.standard_normal(shape, dtype=np.float32)
        with torch.no_grad():
            expected = [t.numpy() for t in model(torch.from_numpy(x))]
        got = executor.run([x])
        assert [g.shape for g in got] == [e.shape for e in expected]
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, atol=1e-4, rtol=1e-3)


# Loads the library through TVM's own loader. This machine's TVM has no CUDA runtime, so the
# CUDA module's loader is stood in for by one that records what the library carries.
_INSPECT_CUDA_LIB = textwrap.dedent("""
    import json, struct, sys
    import tvm, tvm_ffi
    seen = []
    def load_cuda(payload):
        payload = bytes(payload)
        fmt_len = struct.unpack_from("<Q", payload, 0)[0]
        fmt = payload[8:8 + fmt_len].decode()
        magic = payload.find(bytes.fromhex("50ed55ba"))  # NVIDIA fatbin header
        code_len = struct.unpack_from("<Q", payload, magic - 8)[0] if magic >= 8 else -1
        seen.append({"fmt": fmt, "fatbin_is_last": code_len == len(payload) - magic})
        return tvm_ffi.get_global_func("runtime.SourceModuleCreate")("", "cuda")
    tvm_ffi.register_global_func("ffi.Module.load_from_bytes.cuda", load_cuda, override=True)
    tvm.runtime.load_module(sys.argv[1])
    print(json.dumps(seen))
""")


def test_cuda_build_succeeds_without_a_gpu_and_embeds_a_fatbin(tiny_onnx, tmp_path):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH; the source-only path is tested below")
    result = build_tvm(tiny_onnx[1], resolve_target("cuda"), tmp_path)
    assert not result.codegen_only
    assert "fatbin" in result.note and "sm_90" in result.note
    assert result.extra_files == ["model.cu"]
    assert "__global__" in (tmp_path / "model.cu").read_text()
    probe = subprocess.run([sys.executable, "-c", _INSPECT_CUDA_LIB, str(tmp_path / "model.so")],
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert json.loads(probe.stdout.strip().splitlines()[-1]) == [
        {"fmt": "fatbin", "fatbin_is_last": True}]


def test_cuda_build_without_nvcc_ships_source_and_says_so(tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.setattr("forgeline.compile.tvm_build.shutil.which", lambda name: None)
    result = build_tvm(tiny_onnx[1], resolve_target("cuda"), tmp_path)
    assert result.codegen_only
    assert "nvcc is not on PATH" in result.note and "cannot run here" in result.note
    assert (tmp_path / "model.cu").read_text().count("__global__") >= 1
    assert (tmp_path / result.lib_file).is_file()


def test_importer_failure_is_a_compile_error_naming_the_op(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("TopK", ["x", "k"], ["values", "indices"])], "topk",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("values", TensorProto.FLOAT, [4, None]),
         helper.make_tensor_value_info("indices", TensorProto.INT64, [4, None])])
    path = tmp_path / "topk.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(CompileError, match="TopK"):
        build_tvm(path, resolve_target("cpu"), tmp_path / "out")


def test_missing_onnx_file_is_reported(tmp_path):
    from forgeline.runtime.errors import ArtifactError

    with pytest.raises(ArtifactError, match="export the bundle"):
        build_tvm(Path(tmp_path / "nope.onnx"), resolve_target("cpu"), tmp_path)
