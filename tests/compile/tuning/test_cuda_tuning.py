"""MetaSchedule for CUDA on a host without a GPU: what can be checked without measuring.

Task extraction, the generated search space, a candidate built to a real fatbin library, the
database round trip, and the refusal when there is neither a GPU nor an RPC tracker.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms

from forgeline.compile.cuda.fatbin import read_fatbin
from forgeline.compile.cuda.library import read_cuda_payload
from forgeline.compile.tuning.cuda_search import (build_cuda_candidate, check_measurable,
                                                  compile_cuda_with_database, design_space,
                                                  extract_cuda_tasks, prepare_cuda, tuning_target)
from forgeline.compile.tuning.database import TuningDatabase
from forgeline.runtime.errors import ConfigError
from forgeline.runtime.host import cuda_compute_capabilities

TARGET = tuning_target({"kind": "cuda", "arch": "sm_90", "host": {"kind": "llvm"}})


def _dense_gelu():
    """x (8, 64) @ w (64, 128) + GELU: one matmul task and one elementwise epilogue."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape=[8, 64], dtype="float32"))
    w = relax.const(np.random.default_rng(0).standard_normal((64, 128)).astype("float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.gelu(relax.op.matmul(x, w)))  # (8, 128)
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


@pytest.fixture(scope="module")
def tasks():
    fused = prepare_cuda(_dense_gelu(), TARGET)
    return fused, extract_cuda_tasks(fused, TARGET)


def test_tasks_are_the_fused_kernels_of_the_cuda_build(tasks):
    _, found = tasks
    assert [t.task_name for t in found] == ["fused_matmul_gelu"] or any("matmul" in t.task_name for t in found)
    assert all(t.target.kind.name == "cuda" for t in found)


def test_search_space_has_thread_bound_candidates_that_build_to_a_fatbin(tasks, tmp_path):
    from forgeline.compile.cuda.nvcc import find_nvcc

    _, found = tasks
    space = design_space(found[0], TARGET)
    assert space, "MetaSchedule generated no candidate"
    text = space[0].mod.script()
    assert "threadIdx" in text and "blockIdx" in text
    if find_nvcc() is None:
        pytest.skip("no nvcc: install forgeline[cuda-build]")
    library = build_cuda_candidate(space[0].mod, TARGET, None)
    try:
        payload = read_cuda_payload(library)
    finally:  # its temp folder: in a search, MetaSchedule's RemoveBuildArtifact callback removes it once measured
        shutil.rmtree(os.path.dirname(library), ignore_errors=True)
    assert payload.fmt == "fatbin"
    sass = [e for e in read_fatbin(payload.code) if e.kind == "sass"]
    assert sass[0].arch == 90 and set(payload.kernels) <= sass[0].kernels


def test_database_round_trip_applies_the_stored_schedule(tasks, tmp_path):
    fused, found = tasks
    candidate = design_space(found[0], TARGET)[0]
    db = TuningDatabase(tmp_path / "tuning" / "cuda-sm90")
    with db.locked():
        workload = db.ms.commit_workload(found[0].dispatched[0])
        # A stand-in measurement: nothing runs here; the round trip is what is under test.
        db.ms.commit_tuning_record(ms.database.TuningRecord(
            candidate.trace, workload, run_secs=[1e-5], target=TARGET,
            args_info=ms.arg_info.ArgInfo.from_prim_func(found[0].dispatched[0]["main"])))
    with db.locked():  # reopened from the JSON files on disk
        assert db.has_record(found[0].dispatched[0])
        executable = compile_cuda_with_database(fused, TARGET, db)
    assert executable is not None


@pytest.mark.skipif(bool(cuda_compute_capabilities()), reason="this host has a GPU")
def test_no_gpu_and_no_tracker_is_refused_with_a_sentence():
    with pytest.raises(ConfigError, match=r"libcuda\.so\.1.*--rpc-tracker HOST:PORT --rpc-key KEY"):
        check_measurable(None)
    check_measurable(("127.0.0.1", 9190, "h200"))  # a tracker: measurement happens there


def test_unreachable_tracker_is_refused_before_tuning():
    from forgeline.compile.tuning.builder import make_runner

    with pytest.raises(ConfigError, match="Cannot reach the RPC tracker at 127.0.0.1:9"):
        make_runner(timeout_sec=5, rpc=("127.0.0.1", 9, "h200"))
