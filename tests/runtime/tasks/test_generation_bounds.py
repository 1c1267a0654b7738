"""Bounded generation: every symbolic dim is limited, max_new_tokens is a positive int, bad text is refused.

These checks come before any graph runs, so the shared generation artifacts on ONNX Runtime are
enough here; ``past`` is also checked on the compiled TVM decode graph, where an over-long cache
read out of bounds (garbage at 64-1000, a segfault at 100,000) before.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import forgeline.runtime as rt
from forgeline.runtime.errors import ConfigError, InputError


@pytest.mark.parametrize("bad", [0, -1, 3.5, None, True, "8"])
def test_max_new_tokens_must_be_a_positive_int(gen_artifact, bad):
    with rt.load(gen_artifact("gpt"), backend="ort") as gpt, rt.load(gen_artifact("transformer"), backend="ort") as tr:
        with pytest.raises(ConfigError, match="max_new_tokens"):
            gpt.generate([1, 2, 3], bad)
        with pytest.raises(ConfigError, match="max_new_tokens"):
            tr.translate([5, 6, 7], bad, bos_id=1)


def test_prompt_plus_new_tokens_must_fit_the_position_table(gen_artifact):
    with rt.load(gen_artifact("gpt"), backend="ort") as gpt:
        limit = gpt.manifest.config["max_positions"]
        with pytest.raises(InputError, match=f"exceed the model's {limit} positions"):
            gpt.generate([1] * 10, limit - 9)
        assert len(gpt.generate([1] * 10, limit - 10).ids[0]) == limit - 10  # the largest that fits runs


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -1.0])
def test_temperature_must_be_finite(gen_artifact, temperature):
    with rt.load(gen_artifact("gpt"), backend="ort") as gpt, pytest.raises(ConfigError, match="temperature"):
        gpt.generate([1, 2], 4, temperature=temperature)


@pytest.mark.parametrize("prompt", [b"ok \xff\xfe", "bad \udcff surrogate", [b"fine", b"\xc3"]])
def test_prompt_that_is_not_utf8_is_a_sentence(gen_artifact, prompt):
    with rt.load(gen_artifact("gpt"), backend="ort") as gpt, pytest.raises(InputError, match="not valid UTF-8"):
        gpt.generate(prompt, 2)


def test_bytes_prompt_that_is_utf8_is_text(gen_artifact):
    with rt.load(gen_artifact("gpt"), backend="ort") as gpt:
        assert gpt.generate(b"hi", 3).ids == gpt.generate("hi", 3).ids


def test_every_graph_dim_has_a_limit_in_the_manifest(gen_artifact):
    for name, dims in (("gpt", {"batch", "seq", "past"}), ("transformer", {"batch", "src_seq", "tgt_seq", "past"})):
        manifest = rt.Manifest.load(gen_artifact(name))
        assert dims <= set(manifest.dim_limits), name
        positions = manifest.config["max_positions"]
        assert manifest.dim_limits["past"] == positions - 1  # the new token takes position `past`
        assert all(manifest.dim_limits[d] == positions for d in dims - {"batch", "past"})


def _decode_inputs(manifest, past: int) -> dict[str, np.ndarray]:
    c = manifest.config
    kv = np.zeros((1, c["n_heads"], past, c["d_model"] // c["n_heads"]), np.float32)  # one layer's k or v
    caches = {f"past_{name}_{i}": kv for i in range(c["n_layers"]) for name in "kv"}
    return {"input_ids": np.zeros((1, 1), np.int64), "past_mask": np.ones((1, past), np.int64), **caches}


def test_decode_past_beyond_the_position_table_is_refused_on_tvm(gen_artifact):
    path = gen_artifact("gpt")
    with rt.load(path) as model:
        limit = model.manifest.dim_limits["past"]
        out = model.run_graph("decode", **_decode_inputs(model.manifest, limit))  # the longest cache runs
        assert np.isfinite(out["logits"]).all()
        for past in (limit + 1, 1000, 100_000):
            with pytest.raises(InputError, match="at most past="):
                model.run_graph("decode", **_decode_inputs(model.manifest, past))


def test_old_manifest_without_graph_limits_is_bounded_too(gen_artifact, tmp_path):
    import shutil

    art = tmp_path / "old"
    shutil.copytree(gen_artifact("gpt"), art)
    data = json.loads((art / "manifest.json").read_text())
    data["dim_limits"].pop("past")  # as exported before graph dims had limits
    (art / "manifest.json").write_text(json.dumps(data))
    with rt.load(art, backend="ort") as model:
        with pytest.raises(InputError, match="at most past="):
            model.run_graph("decode", **_decode_inputs(model.manifest, 200))
