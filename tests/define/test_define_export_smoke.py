"""Every model exports (dynamo, dynamic batch/seq) and matches eager in ONNX Runtime and TVM.

One exported graph and one compiled TVM module serve two shapes, (2, 8) and (3, 13); routing
outputs must match exactly. The ORT check of one MoE model runs by default; the full set with
TVM takes about two minutes, so it is marked slow.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from forgeline.define import build_model, get_config, list_models

SHAPES = ((2, 8), (3, 13))  # batch, seq: two shapes from one exported/compiled module


def export_onnx(model, path):
    specs = model.input_specs()
    dims = {d: torch.export.Dim(d, max=model.dim_limits()[d]) for s in specs for d in s.dims}
    dynamic_shapes = tuple({i: dims[d] for i, d in enumerate(s.dims)} for s in specs)
    example = model.example_inputs({d: (2 if d == "batch" else 8) for d in dims}, torch.Generator().manual_seed(0))
    torch.onnx.export(model, example, str(path), dynamo=True, input_names=[s.name for s in specs],
                      output_names=model.output_names(), dynamic_shapes=dynamic_shapes, verbose=False)


def inputs_at(model, batch, seq, seed=1):
    dims = {d: (batch if d == "batch" else seq + (3 if d == "src_seq" else 0)) for d in model.dim_limits()}
    return model.example_inputs(dims, torch.Generator().manual_seed(seed))


def max_errors(ref, got, names):
    errors = {}
    for name, r, g in zip(names, ref, got):
        g = np.asarray(g)
        assert r.shape == g.shape, (name, r.shape, g.shape)
        if name.startswith("routing."):
            assert r.dtype == g.dtype == np.int64, (name, g.dtype)
            np.testing.assert_array_equal(r, g, err_msg=name)  # a routing flip is a failure
        else:
            np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-3, err_msg=name)
        errors[name] = float(np.abs(r.astype(np.float64) - g.astype(np.float64)).max())
    return errors


def smoke(name, tmp_path, with_tvm=True):
    """Returns {"export_s", "ort": [errors per shape], "tvm_compile_s", "tvm": [...]}; asserts parity."""
    import onnxruntime as ort

    model = build_model(get_config(name, "tiny"))
    path = tmp_path / f"{name}.onnx"
    t0 = time.time()
    export_onnx(model, path)
    report = {"export_s": time.time() - t0, "ort": [], "tvm": []}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == model.output_names()
    cases = []
    for batch, seq in SHAPES:
        inputs = inputs_at(model, batch, seq)
        with torch.no_grad():
            ref = [o.numpy() for o in model(*inputs)]
        cases.append(([x.numpy() for x in inputs], ref))
        got = sess.run(None, {s.name: x.numpy() for s, x in zip(model.input_specs(), inputs)})
        report["ort"].append(max_errors(ref, got, model.output_names()))
    if with_tvm:
        import onnx
        import tvm
        from tvm.relax.frontend.onnx import from_onnx

        t0 = time.time()
        mod = from_onnx(onnx.load(str(path)), keep_params_in_input=False)
        ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm", "num-cores": 2}))
        vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
        report["tvm_compile_s"] = time.time() - t0
        for np_inputs, ref in cases:
            out = vm["main"](*[tvm.runtime.tensor(a) for a in np_inputs])
            out = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)  # one output comes back bare
            got = [o.numpy() for o in out]
            report["tvm"].append(max_errors(ref, got, model.output_names()))
    return report


NAMES = [m.name for m in list_models()]


def test_gpt_moe_exports_and_matches_in_onnxruntime(tmp_path):
    report = smoke("gpt-moe", tmp_path, with_tvm=False)
    assert len(report["ort"]) == 2 and "routing.1" in report["ort"][0]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_exports_and_matches_in_onnxruntime_and_tvm(name, tmp_path):
    report = smoke(name, tmp_path, with_tvm=True)
    assert len(report["ort"]) == len(report["tvm"]) == 2
