"""Every kernel of a CUDA build gets a schedule: the dlight rules that raise are passed over.

The modules are handmade in Relax with the patterns that broke TVM's default CUDA pipeline (the
expert-choice rank count, the decode graph's one-row matmul with an epilogue) and the sparse-MoE
kernels (gather, batched expert matmul, scatter-add), and each is compiled to real CUDA code.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, tirx
from tvm.s_tir import dlight as dl

from forgeline.compile.cuda.export import find_cuda_modules
from forgeline.compile.cuda.pipeline import cuda_pipeline
from forgeline.compile.cuda.rules import default_rules, schedule_kernel, serial_schedule

from .conftest import cuda_target


def _tensor(shape, dtype="float32"):
    return relax.TensorType(shape=shape, dtype=dtype)


def _module(params, body):
    """A Relax main over ``params`` (name -> (shape, dtype)) whose dataflow ``body`` returns its output."""
    bb = relax.BlockBuilder()
    args = [relax.Var(name, _tensor(shape, dtype)) for name, (shape, dtype) in params.items()]
    with bb.function("main", args):
        with bb.dataflow():
            out = bb.emit_output(body(bb, *args))
        bb.emit_func_output(out)
    return bb.get()


def _rank_count(bb, scores):
    """Expert-choice ranks: how many scores beat each one, a sum over a broadcast comparison."""
    a = bb.emit(relax.op.expand_dims(scores, 2))  # (G, N, 1)
    b = bb.emit(relax.op.expand_dims(scores, 1))  # (G, 1, N)
    beats = bb.emit(relax.op.astype(relax.op.less(a, b), "float32"))  # (G, N, N)
    return bb.emit(relax.op.sum(beats, axis=[2]))  # (G, N)


def _fused_kernels(mod):
    from tvm.relax.backend.cuda import pipeline as tvm_cuda

    target = cuda_target()
    with target:
        passes = [*tvm_cuda.library_dispatch_passes(target), relax.transform.LegalizeOps(),
                  relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
                  relax.transform.FuseOps(), relax.transform.FuseTIR()]
        fused = tvm.transform.Sequential(passes)(mod)
    return target, {gv.name_hint: f for gv, f in fused.functions_items() if isinstance(f, tirx.PrimFunc)}


def test_rank_count_kernel_makes_tvm_default_rules_raise_and_ours_schedule_it():
    n = tirx.Var("n", "int64")
    target, kernels = _fused_kernels(_module({"scores": ([2, n], "float32")}, _rank_count))
    (name, func), = [(k, f) for k, f in kernels.items() if "sum" in k]
    with pytest.raises(AssertionError):  # TVM 0.27's dl.gpu.Reduction on this kernel
        dl.gpu.Reduction().apply(func, target, False)
    scheduled = schedule_kernel(func, target, default_rules(), name)
    assert scheduled.attrs["tirx.is_scheduled"]
    assert "threadIdx.x" in scheduled.script()


def test_serial_schedule_binds_one_block_and_one_thread_and_lowers():
    mod = _module({"scores": ([2, 8], "float32")}, _rank_count)
    target, kernels = _fused_kernels(mod)
    func = next(f for k, f in kernels.items() if "sum" in k)
    text = serial_schedule(func).mod["main"].script()
    assert 'T.thread_binding(1, thread="blockIdx.x")' in text
    assert 'T.thread_binding(1, thread="threadIdx.x")' in text
    # With no dlight rule at all every kernel takes the serial schedule, and the build lowers.
    executable = tvm.compile(mod, target=target, relax_pipeline=cuda_pipeline(target, rules=[]))
    source = str(find_cuda_modules(executable.mod)[0].inspect_source("cuda"))
    assert "fused_expand_dims_expand_dims1_less_cast_sum_kernel(" in source


def _sparse_moe(bb, x, router, w):
    """Gather each expert's k tokens, a batched expert matmul, scatter-add back: (T, D) -> (T, D)."""
    top = bb.emit(relax.op.topk(router, k=4, axis=1, ret_type="indices", dtype="int64"))  # (E, k)
    taken = bb.emit(relax.op.take(x, relax.op.reshape(top, [-1]), axis=0))  # (E*k, D)
    per_expert = bb.emit(relax.op.reshape(taken, [4, 4, 16]))  # (E, k, D)
    out = bb.emit(relax.op.matmul(per_expert, w))  # (E, k, D) batched over experts
    flat = bb.emit(relax.op.reshape(out, [16, 16]))  # (E*k, D)
    where = bb.emit(relax.op.expand_dims(relax.op.reshape(top, [-1]), 1))  # (E*k, 1)
    return bb.emit(relax.op.scatter_nd(relax.op.zeros_like(x), where, flat, reduction="add"))


def test_gather_batched_matmul_and_scatter_add_compile_for_cuda():
    mod = _module({"x": ([8, 16], "float32"), "router": ([4, 8], "float32"),
                   "w": ([4, 16, 16], "float32")}, _sparse_moe)
    target = cuda_target()
    executable = tvm.compile(mod, target=target, relax_pipeline=cuda_pipeline(target))
    source = str(find_cuda_modules(executable.mod)[0].inspect_source("cuda"))
    assert source.count("__global__") >= 3
    assert "scatter" in source.lower() or "atomicAdd" in source or "take" in source


def test_cumsum_moved_to_the_last_axis_gives_numpy_values():
    """The rewrite runs on CPU here (same Relax, llvm) and is compared with numpy's cumsum."""
    from forgeline.compile.cuda.scan import cumsum_on_last_axis

    n = tirx.Var("n", "int64")
    mod = _module({"x": ([3, n, 4], "float32")},
                  lambda bb, x: bb.emit(relax.op.cumsum(x, axis=1)))
    rewritten = cumsum_on_last_axis(mod)
    assert "permute_dims" in rewritten.script()
    executable = tvm.compile(rewritten, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    x = np.random.default_rng(0).standard_normal((3, 5, 4)).astype("float32")
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, np.cumsum(x, axis=1), rtol=1e-6, atol=1e-6)


def test_token_choice_cumsum_over_a_dynamic_axis_compiles_for_cuda():
    n = tirx.Var("n", "int64")
    mod = _module({"x": ([n, 2, 4], "float32")},
                  lambda bb, x: bb.emit(relax.op.cumsum(x, axis=0)))
    target = cuda_target()
    executable = tvm.compile(mod, target=target, relax_pipeline=cuda_pipeline(target))
    assert "cumsum" in str(find_cuda_modules(executable.mod)[0].inspect_source("cuda"))
