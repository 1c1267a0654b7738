"""Every family, every backend, two shapes from one compiled artifact, against eager PyTorch.

The expected numbers come from an eager model built here from the same seed, not from the
artifact's own golden file.
"""

import numpy as np
import pytest
import torch

from forgeline.define import build_model, get_config
from forgeline.runtime import load
from forgeline.runtime.format import DEFAULT_TOLERANCE

# Every model name: the six the walking-skeleton issue requires, plus the MoE encoder-decoder and
# Switch (top-1) token choice.
E2E_MODELS = ("transformer", "bert", "gpt", "gpt-moe", "bert-moe", "gpt-moe-tc", "transformer-moe", "gpt-moe-switch")
SHAPES = ({"batch": 2, "seq": 9}, {"batch": 5, "seq": 30})


def _dims(model, shape):
    names = dict.fromkeys(d for s in model.input_specs() for d in s.dims if isinstance(d, str))
    # src/tgt lengths of the encoder-decoder differ on purpose
    return {n: shape["batch"] if n == "batch" else shape["seq"] + 3 * i for i, n in enumerate(names)}


@pytest.mark.parametrize("name", E2E_MODELS)
def test_eager_ort_tvm_agree_at_two_shapes(name, tiny_artifact):
    path = tiny_artifact(name)
    eager = build_model(get_config(name, "tiny"), seed=0)
    backends = {"ort": load(path, backend="ort"), "tvm": load(path, backend="tvm")}
    assert backends["tvm"].build is not None and len(backends["tvm"].manifest.builds) == 1
    for i, shape in enumerate(SHAPES):
        args = eager.example_inputs(_dims(eager, shape), torch.Generator().manual_seed(100 + i))
        with torch.no_grad():
            want = dict(zip(eager.output_names(), (t.numpy() for t in eager(*args))))
        feeds = {s.name: a.numpy() for s, a in zip(eager.input_specs(), args)}
        for backend, model in backends.items():
            got = model.run(**feeds)
            assert set(got) == set(want), backend
            for out, expected in want.items():
                if out.startswith("routing."):
                    np.testing.assert_array_equal(got[out], expected, err_msg=f"{name} {backend} {out} routing flip")
                else:
                    np.testing.assert_allclose(got[out], expected, atol=DEFAULT_TOLERANCE.atol,
                                               rtol=DEFAULT_TOLERANCE.rtol, err_msg=f"{name} {backend} {out}")


@pytest.mark.parametrize("name", E2E_MODELS)
def test_manifest_records_passing_stages(name, tiny_artifact):
    model = load(tiny_artifact(name), backend="ort")
    stages = model.manifest.stages
    tags = list(model.manifest.builds)
    assert set(stages) == {"onnxruntime", f"tvm/{tags[0]}"}
    assert all(s.passed for s in stages.values())
    # the selfcheck against the golden vectors also passes on this host
    assert model.selfcheck().passed
