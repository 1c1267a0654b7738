"""`forgeline build --onnx FILE`: graphs written outside forgeline, with ONNX Runtime as the reference.

transformers' BertModel and GPT2LMHeadModel (tiny configs) exported by torch.onnx, and a model-zoo
CNN from the onnx wheel (opset 9, weights listed as graph inputs), each built from the file and
compared here with ONNX Runtime on that same file at shapes of its own. Bad files end in one
sentence and exit 1 with nothing written.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from forgeline.cli.app import main
from forgeline.runtime import load
from forgeline.runtime.errors import InputError
from forgeline.runtime.format import DEFAULT_TOLERANCE

VOCAB = 99


def _hf_model(kind: str) -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "bert":
        config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=37, max_position_embeddings=64)
        return transformers.BertModel(config).eval()
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, use_cache=False)
    return transformers.GPT2LMHeadModel(config).eval()


def _export_hf(kind: str, folder: Path) -> Path:
    """torch.onnx.export as a user would call it, outside forgeline (weights in external data)."""
    folder.mkdir()
    path = folder / f"{kind}.onnx"
    ids, mask = torch.randint(0, VOCAB, (2, 8)), torch.ones(2, 8, dtype=torch.int64)
    batch, seq = torch.export.Dim("batch", max=64), torch.export.Dim("seq", max=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_hf_model(kind), (), str(path), kwargs={"input_ids": ids, "attention_mask": mask},
                          dynamo=True, dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                          external_data=True, verbose=False)
    return path


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_transformers_graphs_build_and_match_onnx_runtime(kind, tmp_path, capsys):
    path = _export_hf(kind, tmp_path / "user")
    out = tmp_path / "artifact"
    argv = ["-q", "build", "--onnx", str(path), "-o", str(out), "--dim-limit", "seq=64"]  # the position table's rows
    assert main(argv) == 0, capsys.readouterr().err
    assert "all stages match ONNX Runtime" in capsys.readouterr().out
    session = ort.InferenceSession(str(path))
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(0)
    with load(out, backend="tvm") as model:
        assert [o.name for o in model.outputs] == names  # outputs keep their ONNX names
        for batch, seq in ((2, 7), (1, 19)):
            arrays = {"input_ids": rng.integers(0, VOCAB, (batch, seq)).astype(np.int64),
                      "attention_mask": np.ones((batch, seq), np.int64)}
            arrays["attention_mask"][0, -3:] = 0  # real padding
            got = model.run(**arrays)
            for name, expected in zip(names, session.run(names, arrays)):
                np.testing.assert_allclose(got[name], expected, atol=DEFAULT_TOLERANCE.atol, rtol=DEFAULT_TOLERANCE.rtol)
        with pytest.raises(InputError, match="at most seq=64"):  # past the table: refused, never read out of bounds
            model.run(input_ids=np.zeros((1, 65), np.int64), attention_mask=np.ones((1, 65), np.int64))


def _zoo_with_random_weights(path: Path) -> Path:
    """The wheel's light SqueezeNet (opset 9, every weight also listed as a graph input) with its
    ConstantOfShape placeholders replaced by random weights, so the outputs are not constant."""
    source = Path(onnx.__file__).parent / "backend/test/data/light/light_squeezenet.onnx"
    model = onnx.load(str(source))
    shapes = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    rng = np.random.default_rng(0)
    kept = []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            shape = tuple(int(v) for v in shapes[node.input[0]])
            weight = (rng.standard_normal(shape) * (2.0 / np.prod(shape[1:])) ** 0.5).astype(np.float32)
            model.graph.initializer.append(numpy_helper.from_array(weight, node.output[0]))
            model.graph.input.append(helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, shape))
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    onnx.save(model, str(path))
    return path


def test_a_model_zoo_cnn_builds_and_matches_onnx_runtime(tmp_path, capsys):
    path = _zoo_with_random_weights(tmp_path / "squeezenet.onnx")
    out = tmp_path / "artifact"
    assert main(["-q", "build", "--onnx", str(path), "-o", str(out)]) == 0, capsys.readouterr().err
    session = ort.InferenceSession(str(path))
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    expected = session.run(None, {"data_0": x})[0]
    assert expected.std() > 1e-4  # the random weights make the classes differ
    with load(out, backend="tvm") as model:
        assert [s.name for s in model.inputs] == ["data_0"]  # the weights listed as inputs are weights
        got = model.run(data_0=x)["softmaxout_1"]
    np.testing.assert_allclose(got, expected, atol=DEFAULT_TOLERANCE.atol, rtol=DEFAULT_TOLERANCE.rtol)


def _det_file(folder: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="relu_0"),
                               helper.make_node("Det", ["r"], ["y"], name="det_0")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(folder / "det.onnx"))
    return folder / "det.onnx"


def _matmul_model():
    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])], initializer=[weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _outside_file(folder: Path) -> Path:
    """A graph whose weight's external data ``location`` climbs out of its folder."""
    (folder / "model").mkdir()
    (folder / "secret.bin").write_bytes(np.ones((64, 64), np.float32).tobytes())
    model = _matmul_model()
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../secret.bin")
    path = folder / "model" / "outside.onnx"
    onnx.save_model(model, str(path))
    return path


def _truncated_file(folder: Path) -> Path:
    data = _matmul_model().SerializeToString()
    (folder / "truncated.onnx").write_bytes(data[: len(data) // 2])
    return folder / "truncated.onnx"


def _big_file(folder: Path) -> Path:
    onnx.save(_matmul_model(), str(folder / "big.onnx"))
    return folder / "big.onnx"


@pytest.mark.parametrize("make, extra, phrase", [
    (_det_file, [], "no converter for op Det (node det_0)"),
    (_truncated_file, [], "not a readable ONNX model"),
    (_outside_file, [], "outside the model's folder"),
    (_big_file, ["--max-onnx-mb", "0"], "over the stated limit"),
])
def test_bad_files_end_in_one_sentence_and_write_nothing(make, extra, phrase, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = make(inputs)
    outputs = tmp_path / "out"
    outputs.mkdir()
    assert main(["-q", "build", "--onnx", str(path), "-o", str(outputs / "artifact"), *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and phrase in err, err
    assert list(outputs.iterdir()) == []  # no artifact, no staging folder
