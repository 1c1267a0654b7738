"""The TVM executor: runs a compiled library with the TVM runtime alone, never importing torch,
onnx or the TVM compiler, with its thread count set on purpose."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from forgeline.runtime.errors import ArtifactError, InputError, TargetMismatchError
from forgeline.runtime.host import cpu_core_count, cuda_compute_capabilities


@pytest.fixture(scope="module")
def mlp_lib(tmp_path_factory):
    """relu(x @ W + b) with dynamic batch, one output; built from hand-made ONNX (no torch)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from forgeline.compile.targets import resolve_target
    from forgeline.compile.tvm_build import build_tvm

    rng = np.random.default_rng(1)
    weight = rng.standard_normal((6, 4), dtype=np.float32)
    bias = rng.standard_normal(4, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["pre"]),
         helper.make_node("Relu", ["pre"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")])
    root = tmp_path_factory.mktemp("mlp")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]),
              str(root / "mlp.onnx"))
    result = build_tvm(root / "mlp.onnx", resolve_target("cpu"), root / "cpu")
    return root / "cpu" / result.lib_file, weight, bias


def test_single_output_comes_back_as_a_list(mlp_lib):
    from forgeline.runtime.backends.tvm import TvmExecutor

    lib, weight, bias = mlp_lib
    x = np.random.default_rng(2).standard_normal((5, 6), dtype=np.float32)
    (y,) = TvmExecutor(lib).run([x])
    np.testing.assert_allclose(y, np.maximum(x @ weight + bias, 0), atol=1e-5, rtol=1e-5)


def test_bad_inputs_and_paths_are_sentences(mlp_lib, tmp_path):
    from forgeline.runtime.backends.tvm import TvmExecutor

    executor = TvmExecutor(mlp_lib[0])
    with pytest.raises(InputError, match="float32"):
        executor.run([np.zeros((2, 7), np.float32)])  # wrong feature width
    with pytest.raises(ArtifactError, match="does not exist"):
        TvmExecutor(tmp_path / "missing.so")
    if not cuda_compute_capabilities():
        with pytest.raises(TargetMismatchError, match="libcuda.so.1|no CUDA device"):
            TvmExecutor(mlp_lib[0], device="cuda")


_RUN_IN_FRESH_PROCESS = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    started = time.perf_counter()
    from forgeline.runtime.backends.tvm import TvmExecutor
    executor = TvmExecutor(sys.argv[1])
    loaded = time.perf_counter() - started
    (y,) = executor.run([np.ones((3, 6), np.float32)])
    import tvm_ffi
    maps = open("/proc/self/maps").read()
    print(json.dumps({
        "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "tvm", "ml_dtypes")),
        "tvm_libs": sorted(n for n in ("libtvm_runtime.so", "libtvm_compiler.so") if n in maps),
        "threads": tvm_ffi.get_global_func("runtime.NumThreads")(),
        "tvm_num_threads": __import__("os").environ.get("TVM_NUM_THREADS"),
        "shape": list(y.shape), "load_seconds": loaded}))
""")


def test_runtime_imports_no_torch_onnx_tvm_package_or_compiler(mlp_lib):
    """A CPU build runs through tvm_ffi and libtvm_runtime alone: not even the tvm package (whose
    import costs more than the whole cold start, runtime/backends/tvm_io.py), nor ml_dtypes."""
    import torch  # noqa: F401  (a hard dependency: the check means most where torch is installed)
    import ml_dtypes  # noqa: F401  (apache-tvm depends on it: the check means most where it is installed)
    env_free = {k: v for k, v in __import__("os").environ.items()
                if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "TVM_USE_RUNTIME_LIB")}
    probe = subprocess.run([sys.executable, "-c", _RUN_IN_FRESH_PROCESS, str(mlp_lib[0])],
                           capture_output=True, text=True, timeout=120, env=env_free)
    assert probe.returncode == 0, probe.stderr[-2000:]
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["tvm_libs"] == ["libtvm_runtime.so"]  # the compiler library was never loaded
    assert report["threads"] == cpu_core_count()  # not TVM's default of half the CPUs
    # TVM reads the variable at every parallel launch: without it a 2-core x86 machine ran every
    # kernel serially while NumThreads said 2 (runtime/backends/environ.py).
    assert report["tvm_num_threads"] == str(cpu_core_count())
    assert report["shape"] == [3, 4]
    print(f"runtime-only import + load: {report['load_seconds']:.2f} s")


def test_input_count_is_checked_by_name(mlp_lib):
    from forgeline.runtime.backends.tvm import TvmExecutor

    executor = TvmExecutor(mlp_lib[0])
    assert executor.input_names == ["x"]
    with pytest.raises(InputError, match=r"takes 1 array\(s\) \(x\), but 2 were given"):
        executor.run([np.zeros((2, 6), np.float32)] * 2)


def test_allow_tvm_threads_sets_the_variable_once_and_keeps_a_users_value(monkeypatch, caplog):
    import logging
    import os

    from forgeline.runtime.backends.environ import allow_tvm_threads

    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    allow_tvm_threads(1)
    assert os.environ["TVM_NUM_THREADS"] == str(max(1, cpu_core_count()))
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    with caplog.at_level(logging.WARNING, logger="forgeline.runtime.backends.environ"):
        allow_tvm_threads(3)
    assert os.environ["TVM_NUM_THREADS"] == "1"  # the user's value stands
    assert "allows fewer than the 3 threads" in caplog.text
