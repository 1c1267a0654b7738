"""Real fatbins from NVIDIA's nvcc: the arch each targets, every launched kernel inside, read
straight from the exported library's bytes (no stand-in for TVM's CUDA loader, which needs a
driver this host does not have)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from forgeline.compile.cuda.fatbin import read_fatbin
from forgeline.compile.cuda.library import read_cuda_payload
from forgeline.compile.cuda.nvcc import find_nvcc, nvcc_first_on_path
from forgeline.compile.targets import resolve_target
from forgeline.compile.tvm_build import build_tvm



class SmallBlock(torch.nn.Module):
    """Linear -> GELU -> LayerNorm -> softmax."""

    def __init__(self):
        super().__init__()
        self.proj, self.norm = torch.nn.Linear(16, 32), torch.nn.LayerNorm(32)

    def forward(self, x):  # x: (B, T, 16)
        return torch.softmax(self.norm(torch.nn.functional.gelu(self.proj(x))), -1)  # (B, T, 32)


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    """A small block with dynamic batch and sequence."""
    torch.manual_seed(0)
    model = SmallBlock().eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=256)
    torch.onnx.export(model, (torch.randn(2, 5, 16),), str(path), dynamo=True,
                      dynamic_shapes={"x": {0: batch, 1: seq}}, input_names=["x"], output_names=["y"])
    return path


def _kernels_in_source(source: str) -> set[str]:
    import re

    return set(re.findall(r"__global__ void(?: __launch_bounds__\(\d+\))? (\w+)\(", source))


@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_library_embeds_a_fatbin_for_the_arch_with_every_kernel(small_onnx, tmp_path, nvcc, arch):
    result = build_tvm(small_onnx, resolve_target("cuda", arch=arch), tmp_path)
    assert not result.codegen_only and arch in result.note
    assert "not checked on this host" in result.note
    payload = read_cuda_payload(tmp_path / result.lib_file)
    assert payload.fmt == "fatbin"
    entries = read_fatbin(payload.code)
    sm = int(arch[3:])
    assert {(e.kind, e.arch) for e in entries} == {("sass", sm), ("ptx", sm)}
    launched = set(payload.kernels)  # what the host side calls, from TVM's function table
    assert launched == _kernels_in_source((tmp_path / "model.cu").read_text())
    for entry in entries:
        assert launched <= entry.kernels, (entry.kind, sorted(launched - entry.kernels))


def test_nvidia_pypi_nvcc_is_preferred_to_path(nvcc, tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "nvcc"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 1.0, V1.0'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{__import__('os').environ['PATH']}")
    chosen = find_nvcc()
    if chosen.origin == "PATH":
        pytest.skip("no PyPI nvcc here; the PATH one is all there is")
    assert chosen.path != fake and chosen.version.startswith("13.")


def test_path_change_for_nvcc_is_undone(nvcc):
    import os

    before = os.environ["PATH"]
    with nvcc_first_on_path(nvcc):
        assert os.environ["PATH"].split(os.pathsep)[0] == str(nvcc.path.parent)
    assert os.environ["PATH"] == before


# TVM's own loader reads the library (its "cuda" module loader is the one piece stood in for, since
# it needs libcuda.so.1): the rewritten blob must still be one TVM accepts, with the fatbin last.
_LOAD_THROUGH_TVM = textwrap.dedent("""
    import json, sys
    import tvm, tvm_ffi
    seen = []
    def load_cuda(payload):
        payload = bytes(payload)
        seen.append(payload[8:8 + 6].decode())
        return tvm_ffi.get_global_func("runtime.SourceModuleCreate")("", "cuda")
    tvm_ffi.register_global_func("ffi.Module.load_from_bytes.cuda", load_cuda, override=True)
    tvm.runtime.load_module(sys.argv[1])
    print(json.dumps(seen))
""")


def test_tvm_loader_accepts_the_rewritten_library(small_onnx, tmp_path, nvcc):
    result = build_tvm(small_onnx, resolve_target("cuda"), tmp_path)
    probe = subprocess.run([sys.executable, "-c", _LOAD_THROUGH_TVM, str(tmp_path / result.lib_file)],
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert json.loads(probe.stdout.strip().splitlines()[-1]) == ["fatbin"]
