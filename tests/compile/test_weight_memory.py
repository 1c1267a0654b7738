"""How a build holds its weights: transposed weights read once, packing folded step by step."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")


def _tied_graph(folder, vocab: int = 10, width: int = 6):
    """``logits = (E[ids] + x @ W.T) @ E.T``: a linear layer and a tied embedding, as torch exports them."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import convert_model_to_external_data

    rng = np.random.default_rng(0)
    w = rng.standard_normal((width, 8)).astype(np.float32)  # nn.Linear(8, width).weight: (out, in)
    e = rng.standard_normal((vocab, width)).astype(np.float32)  # embedding (vocab, d), also the head
    nodes = [helper.make_node("Transpose", ["W"], ["W_t"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "W_t"], ["proj"]),
             helper.make_node("Gather", ["E", "ids"], ["emb"]),
             helper.make_node("Add", ["emb", "proj"], ["h"]),
             helper.make_node("Transpose", ["E"], ["E_t"]),  # no perm: ONNX reverses the axes
             helper.make_node("MatMul", ["h", "E_t"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tied",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 3, vocab])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(e, "E")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    onnx.save(model, str(folder / "tied.onnx"))
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    ids = np.concatenate([[[0, vocab - 1, 17 % vocab]], rng.integers(0, vocab, (1, 3))]).astype(np.int64)
    return folder / "tied.onnx", {"x": x, "ids": ids}, (e[ids] + x @ w.T) @ e.T


def test_transposed_weights_become_initializers_and_unread_originals_leave(tmp_path):
    from forgeline.compile.weight_transposes import fold_weight_transposes

    path, _inputs, _expected = _tied_graph(tmp_path)
    model = onnx.load(str(path), load_external_data=False)
    transposed = fold_weight_transposes(model)
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Gather", "Add", "MatMul"]
    dims = {init.name: list(init.dims) for init in model.graph.initializer}
    assert dims == {"E": [10, 6], "W_t": [8, 6], "E_t": [6, 10]}  # W has no reader left; E feeds the Gather
    assert transposed["W_t"].perm == (1, 0) and transposed["E_t"].stored_dims == (10, 6)


def test_graph_with_folded_transposes_imports_and_matches_onnx_runtime(tmp_path):
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from forgeline.compile.tvm_build import import_relax

    path, inputs, expected = _tied_graph(tmp_path)
    ort_out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    np.testing.assert_allclose(ort_out, expected, rtol=1e-5, atol=1e-5)  # the graph says what we think
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no third-party warning per external weight reaches a caller
        mod = import_relax(path)
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(inputs["x"]), tvm.runtime.tensor(inputs["ids"])).numpy()
    np.testing.assert_allclose(out, ort_out, rtol=1e-5, atol=1e-5)


def test_packing_folded_one_weight_per_step_matches_numpy(monkeypatch):
    """With a step of one byte every packing call is its own step: the result must not change."""
    import tvm
    from tvm import relax
    from tvm.script import ir as I, relax as R

    from forgeline.compile.cpu import weights
    from forgeline.compile.cpu.pipeline import run_cpu_pipeline
    from forgeline.compile.owned_module import OwnedModule

    rng = np.random.default_rng(1)
    w1, w2, w3 = (rng.standard_normal(s).astype(np.float32) for s in [(16, 32), (32, 24), (24, 16)])

    @I.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor(("n", 16), "float32")):
            with R.dataflow():
                h = R.nn.relu(R.matmul(x, R.const(w1)))
                g = R.nn.relu(R.matmul(h, R.const(w2)))
                out = R.matmul(g, R.const(w3))
                R.output(out)
            return out

    steps = []
    fold_step = weights._fold_step
    monkeypatch.setattr(weights, "FOLD_CHUNK_BYTES", 1)
    monkeypatch.setattr(weights, "_fold_step", lambda mod, pending: steps.append(len(pending)) or fold_step(mod, pending))
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    owned = OwnedModule(Module)
    with target:
        lowered = run_cpu_pipeline(owned, target)
    with pytest.raises(RuntimeError, match="already taken"):
        owned.take()
    assert steps == [3, 2, 1]  # one packed weight per step
    vm = relax.VirtualMachine(tvm.compile(lowered, target=target, relax_pipeline=None), tvm.cpu())
    x = rng.standard_normal((5, 16)).astype(np.float32)
    expected = np.maximum(np.maximum(x @ w1, 0) @ w2, 0) @ w3
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_tied_embedding_reads_the_packed_head_and_is_not_stored_twice(tmp_path):
    """fp32: the lookup reads the LM head's packed panels; the table itself leaves the build."""
    import tvm
    from tvm import relax

    from forgeline.compile.cpu.pipeline import run_cpu_pipeline
    from forgeline.compile.owned_module import OwnedModule
    from forgeline.compile.params_lift import LiftedParams
    from forgeline.compile.tvm_build import import_relax

    vocab, width = 300, 16  # 19 KB: large enough to leave the library as a parameter
    path, inputs, expected = _tied_graph(tmp_path, vocab, width)
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    lifted = LiftedParams()
    with target:
        lowered = run_cpu_pipeline(OwnedModule(import_relax(path)), target, lifted=lifted)
    shapes = [a.shape for a in lifted.arrays]
    assert (vocab, width) not in shapes and (width, vocab) not in shapes  # only the packed head holds E
    assert sum(a.size for a in lifted.arrays) < 1.2 * vocab * width + 8 * width  # E once, W, padding
    vm = relax.VirtualMachine(tvm.compile(lowered, target=target, relax_pipeline=None), tvm.cpu())
    params = [tvm.runtime.tensor(a) for a in lifted.arrays]
    out = vm["main"](tvm.runtime.tensor(inputs["x"]), tvm.runtime.tensor(inputs["ids"]), params).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)  # numpy's own E[ids] and E.T
