"""A whole MoE artifact built for CUDA with its KV-cache graphs: every graph gets a real fatbin, the
build record says it was not checked here, and the runtime refuses it with a sentence."""

from __future__ import annotations

import pytest

from forgeline.compile import CompileOptions, compile_artifact
from forgeline.compile.cuda.fatbin import read_fatbin
from forgeline.compile.cuda.library import read_cuda_payload
from forgeline.runtime.errors import CompileError, TargetMismatchError
from forgeline.runtime.format import Manifest
from forgeline.runtime.host import cuda_compute_capabilities


@pytest.fixture(scope="module")
def moe_cuda(tmp_path_factory, nvcc):
    """gpt-moe tiny (expert-choice router, prefill and decode graphs) compiled for cuda sm_90."""
    from forgeline.export import ExportOptions, export_model

    out = tmp_path_factory.mktemp("cuda") / "gpt-moe"
    export_model("gpt-moe", out, ExportOptions())
    compile_artifact(out, CompileOptions(target="cuda"))
    return out


def test_every_graph_embeds_sm90_sass_with_all_its_kernels(moe_cuda):
    manifest = Manifest.load(moe_cuda)
    build = manifest.builds["cuda-sm90"]
    assert not build.codegen_only and build.precision == "fp32"
    assert "not checked on this host" in build.note or cuda_compute_capabilities()
    assert sorted(build.graph_libs) == sorted(manifest.graphs) == ["decode", "prefill"]
    for lib in [build.lib, *build.graph_libs.values()]:
        payload = read_cuda_payload(moe_cuda / lib)
        sass = [e for e in read_fatbin(payload.code) if e.kind == "sass"]
        assert [e.arch for e in sass] == [90], lib
        assert set(payload.kernels) <= sass[0].kernels, lib


@pytest.mark.skipif(bool(cuda_compute_capabilities()), reason="this host has a GPU")
def test_loading_a_cuda_build_without_a_driver_names_what_is_missing(moe_cuda):
    from forgeline import runtime as rt

    with pytest.raises(TargetMismatchError, match="libcuda.so.1"):
        rt.load(moe_cuda, target="cuda")


@pytest.mark.skipif(bool(cuda_compute_capabilities()), reason="this host has a GPU")
def test_executor_refuses_cuda_without_a_driver(moe_cuda):
    from forgeline.runtime.backends.tvm import TvmExecutor

    lib = moe_cuda / Manifest.load(moe_cuda).builds["cuda-sm90"].lib
    with pytest.raises(TargetMismatchError, match="libcuda.so.1 is not found"):
        TvmExecutor(lib, device="cuda", device_id=0)


def test_a_graph_that_does_not_compile_fails_the_build(moe_cuda, tmp_path, monkeypatch):
    import shutil

    import forgeline.compile.artifact as artifact

    copy = tmp_path / "copy"
    shutil.copytree(moe_cuda, copy)
    real = artifact.build_tvm

    def failing_prefill(onnx_path, *args, **kwargs):
        if onnx_path.name.startswith("prefill"):
            raise CompileError("TVM could not compile the model for cuda-sm90: stand-in failure.")
        return real(onnx_path, *args, **kwargs)

    monkeypatch.setattr(artifact, "build_tvm", failing_prefill)
    before = Manifest.load(copy).builds["cuda-sm90"]
    with pytest.raises(CompileError, match="prefill graph of .* did not compile for cuda-sm90"):
        compile_artifact(copy, CompileOptions(target="cuda"))
    after = Manifest.load(copy)  # the incomplete build never lands: the previous one stays as it was
    assert after.builds["cuda-sm90"] == before
    after.verify_files(copy)
    assert not list((copy / "tvm").glob(".forgeline-tmp-*"))


@pytest.mark.skipif(bool(cuda_compute_capabilities()), reason="this host has a GPU")
def test_cli_tune_for_cuda_without_gpu_or_tracker_refuses_in_one_sentence(moe_cuda, capsys, tmp_path):
    from forgeline.cli.app import main

    code = main(["tune", str(moe_cuda), "--target", "cuda", "--buckets", "1x8",
                 "--tuning-db", str(tmp_path / "db")])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: ") and "Traceback" not in err
    assert "libcuda.so.1" in err and "--rpc-tracker HOST:PORT" in err
    assert not Manifest.load(moe_cuda).builds["cuda-sm90"].buckets
