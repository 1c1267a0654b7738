"""The rewrites for graphs forgeline did not export (compile/graph_fixups.py), each on a small graph.

Every rewritten graph must still compute what the original computes: the expected values come from
ONNX Runtime on the original file, or from numpy by hand.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from forgeline.compile.graph_fixups import (attention_as_matmuls, drop_weights_listed_as_inputs, first_unsupported_node,
                                            inference_dropouts, positions_without_range, scalar_constants_of_shape)


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _positions_graph():
    """x (b, s, 4) + arange(s)[None, :, None], then Reshape to [b, s, -1]: the pattern of
    transformers' masks and position ids, where the importer loses the shape."""
    ints = lambda name, values: numpy_helper.from_array(np.array(values, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["seq"], axis=0),  # scalar s
        helper.make_node("Range", ["zero", "seq", "one"], ["positions"]),  # (s,)
        helper.make_node("Cast", ["positions"], ["positions_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["positions_f", "axes02"], ["grid"]),  # (1, s, 1)
        helper.make_node("Add", ["x", "grid"], ["summed"]),  # (b, s, 4)
        helper.make_node("Slice", ["shape", "zero1", "two1"], ["lead"]),
        helper.make_node("Concat", ["lead", "minus1"], ["target"], axis=0),  # [b, s, -1]
        helper.make_node("Reshape", ["summed", "target"], ["y"]),
    ]
    inits = [ints("zero", 0), ints("one", 1), ints("axes02", [0, 2]), ints("zero1", [0]), ints("two1", [2]),
             ints("minus1", [-1])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 4])], inits)


def _compile_and_run(model, arrays):
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(model, keep_params_in_input=False)
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy()


def test_range_positions_import_and_match_after_the_rewrite():
    from tvm.relax.frontend.onnx import from_onnx

    model = _positions_graph()
    with pytest.raises(Exception, match="known shape"):
        from_onnx(model, keep_params_in_input=False)
    assert positions_without_range(model) == 1
    assert "Range" not in {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model, full_check=True)
    for b, s in ((1, 5), (3, 11)):
        x = np.random.default_rng(s).standard_normal((b, s, 4)).astype(np.float32)
        expected = x + np.arange(s, dtype=np.float32)[None, :, None]  # numpy by hand
        np.testing.assert_allclose(_compile_and_run(model, [x]), expected, rtol=0, atol=0)


def test_a_range_that_does_not_count_from_zero_by_one_is_left_alone():
    model = _positions_graph()
    for init in model.graph.initializer:
        if init.name == "zero":
            init.CopyFrom(numpy_helper.from_array(np.array(2, np.int64), "zero"))
    assert positions_without_range(model) == 0
    assert "Range" in {n.op_type for n in model.graph.node}


def test_weights_listed_as_inputs_become_weights(tmp_path):
    weight = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                    helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 4])],  # opset-9 zoo style
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                   [numpy_helper.from_array(weight, "w")], opset=9)
    path = tmp_path / "zoo.onnx"
    onnx.save(model, str(path))
    x = np.ones((2, 3), np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert drop_weights_listed_as_inputs(model) == 1
    assert [v.name for v in model.graph.input] == ["x"]
    np.testing.assert_allclose(_compile_and_run(model, [x]), expected, rtol=1e-6)


def test_the_first_unsupported_node_is_named():
    model = _model([helper.make_node("Relu", ["x"], ["r"], name="relu_0"), helper.make_node("Det", ["r"], ["y"], name="det_0")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    assert first_unsupported_node(model, {"Relu"}) == ("Det", "det_0")
    assert first_unsupported_node(model, {"Relu", "Det"}) is None


def test_a_constant_of_empty_shape_becomes_a_scalar(tmp_path):
    """The TorchScript exporter's way of writing a scalar (transformers' masks under dynamo=False)."""
    from tvm.relax.frontend.onnx import from_onnx

    nodes = [helper.make_node("ConstantOfShape", ["empty"], ["three"], value=numpy_helper.from_array(np.array([3.0], np.float32))),
             helper.make_node("Add", ["x", "three"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
                   [numpy_helper.from_array(np.zeros(0, np.int64), "empty")])
    path = tmp_path / "scalar.onnx"
    onnx.save(model, str(path))
    x = np.arange(5, dtype=np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    with pytest.raises(Exception, match="broadcast_to"):
        from_onnx(model, keep_params_in_input=False)
    assert scalar_constants_of_shape(model) == 1
    np.testing.assert_allclose(_compile_and_run(model, [x]), expected, rtol=0, atol=0)


def test_an_inference_dropout_becomes_identity_and_the_cpu_build_matches(tmp_path):
    """Model-zoo style (opset 9): Gemm -> Relu -> Dropout with an unread mask. Fused into one kernel
    with the mask's second output, the CPU schedule rules rejected it; as Identity it builds."""
    from forgeline.compile.targets import resolve_target
    from forgeline.compile.tvm_build import build_tvm
    from forgeline.runtime.backends.tvm import TvmExecutor

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b")]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1), helper.make_node("Relu", ["g"], ["r"]),
             helper.make_node("Dropout", ["r"], ["y", "mask"], ratio=0.5)]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], inits, opset=9)
    path = tmp_path / "dropout.onnx"
    onnx.save(model, str(path))
    x = rng.standard_normal((1, 32)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert inference_dropouts(onnx.load(str(path))) == 1
    build_tvm(path, resolve_target("cpu"), tmp_path / "build")  # the rewrite runs inside the import
    got = TvmExecutor(tmp_path / "build" / "model.so", device="cpu").run([x])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_a_dropout_whose_mask_is_read_stays():
    nodes = [helper.make_node("Dropout", ["x"], ["y", "mask"]), helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT)]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]),
                    helper.make_tensor_value_info("m", TensorProto.FLOAT, [4])], opset=9)
    assert inference_dropouts(model) == 0


def test_a_converter_that_fails_names_the_node(tmp_path):
    from forgeline.compile.tvm_build import import_relax
    from forgeline.runtime.errors import CompileError

    model = _model([helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="topk_0")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"]),
                    helper.make_tensor_value_info("k", TensorProto.INT64, [1])],  # TVM takes a constant k only
                   [helper.make_tensor_value_info("values", TensorProto.FLOAT, [None]),
                    helper.make_tensor_value_info("indices", TensorProto.INT64, [None])])
    onnx.save(model, str(tmp_path / "topk.onnx"))
    with pytest.raises(CompileError, match=r"on op TopK \(node topk_0\)"):
        import_relax(tmp_path / "topk.onnx")


class _Sdpa(torch.nn.Module):
    def forward(self, q, k, v, keep):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, H, S, D)


def test_onnx_attention_is_written_as_matmuls_and_matches_onnx_runtime(tmp_path):
    """torch.onnx at opset 23 writes SDPA as ONNX's own Attention op, which TVM's importer mistakes
    for Microsoft's contrib op."""
    from tvm.relax.frontend.onnx import from_onnx

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=gen) for _ in range(3))
    keep = torch.rand(2, 1, 6, 6, generator=gen) > 0.3
    keep[0, 0, 2, :] = False  # a query with every key masked: 0 in ONNX Runtime and torch
    path = tmp_path / "sdpa.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Sdpa(), (q, k, v, keep), str(path), dynamo=True, opset_version=23, verbose=False)
    model = onnx.load(str(path))
    assert "Attention" in {n.op_type for n in model.graph.node}
    with pytest.raises(Exception, match="num_heads"):
        from_onnx(onnx.load(str(path)), keep_params_in_input=False)
    arrays = [t.numpy() for t in (q, k, v, keep)]
    session = ort.InferenceSession(str(path))
    expected = session.run(None, dict(zip([i.name for i in session.get_inputs()], arrays)))[0]
    assert attention_as_matmuls(model) == 1
    np.testing.assert_allclose(_compile_and_run(model, arrays), expected, rtol=1e-5, atol=1e-6)
