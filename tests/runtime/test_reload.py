"""A process that reloads an artifact rebuilt in place runs the new library, not dlopen's cached old one."""

from __future__ import annotations

import numpy as np

import forgeline.runtime as rt

IDS = np.array([[5, 17, 42, 7]], dtype=np.int64)


def test_reload_after_an_in_place_rebuild_runs_the_new_library(artifact_copy, tmp_path, monkeypatch):
    from forgeline.compile import compile_artifact
    from forgeline.export import ExportOptions, export_model

    monkeypatch.setenv("FORGELINE_CACHE_DIR", str(tmp_path / "cache"))
    art = artifact_copy("gpt")
    with rt.load(art) as model:
        old = model.run(input_ids=IDS)["logits"]
        assert model.selfcheck().passed
    # build --overwrite with other weights: the library lands at the same path, tvm/<tag>/model.so
    export_model("gpt", art, ExportOptions(overwrite=True, seed=7, generation_graphs=False))
    compile_artifact(art)
    with rt.load(art, backend="ort") as reference:  # ONNX Runtime on the new graph: independent of TVM
        expected = reference.run(input_ids=IDS)["logits"]
    assert np.abs(expected - old).max() > 1e-2  # the new weights really change the outputs
    with rt.load(art) as model:
        new = model.run(input_ids=IDS)["logits"]
        assert model.selfcheck().passed  # the new golden vectors (eager PyTorch of the new weights)
    np.testing.assert_allclose(new, expected, atol=1e-4, rtol=1e-3)
    # The weights live in params.safetensors, so a rebuild with other weights may leave the kernels'
    # bytes as they were; each library is loaded from a copy named by its content either way.
    copies = sorted(p.name for p in (tmp_path / "cache" / "libs").glob("*.so"))
    assert copies and all(len(name) == 64 + 3 for name in copies)  # named by sha256
