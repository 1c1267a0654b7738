"""The manifest's ``source`` (registry, module, onnx) and a build's ``dense_layers`` and ``vm``: round trip and refusal."""

from __future__ import annotations

import pytest

from forgeline.runtime.errors import ArtifactError
from forgeline.runtime.format import Manifest, TensorSpec


def _manifest(**fields) -> dict:
    manifest = Manifest(name="m", preset="onnx", family="onnx", config={}, inputs=[TensorSpec("x", "float32", ("n", 4))],
                        outputs=[TensorSpec("y", "float32", ("n", 4))], dim_limits={"n": None}, **fields)
    return manifest.to_dict()


def test_source_round_trips_and_names_the_reference():
    assert Manifest.from_dict(_manifest(source="onnx")).reference == "ONNX Runtime"
    assert Manifest.from_dict(_manifest(source="module")).reference == "eager PyTorch at build time"
    older = _manifest()
    del older["source"]  # written before the field existed: a registry model
    assert Manifest.from_dict(older).source == "registry"


def test_a_bad_source_or_dense_layers_is_refused():
    with pytest.raises(ArtifactError, match="source is 'elsewhere'"):
        Manifest.from_dict({**_manifest(), "source": "elsewhere"})
    build = {"tag": "cpu", "kind": "llvm", "target": {}, "requires": {}, "lib": "tvm/cpu/model.so",
             "dense_layers": [32]}
    with pytest.raises(ArtifactError, match=r"dense_layers\[0\] must be a string"):
        Manifest.from_dict({**_manifest(), "builds": {"cpu": build}})


def test_a_build_records_its_vm_mode_and_an_older_one_reads_as_bytecode():
    build = {"tag": "cpu", "kind": "llvm", "target": {}, "requires": {}, "lib": "tvm/cpu/model.so"}
    older = Manifest.from_dict({**_manifest(), "builds": {"cpu": build}})  # no "vm": before the field
    assert older.builds["cpu"].vm == "bytecode"
    compiled = Manifest.from_dict({**_manifest(), "builds": {"cpu": {**build, "vm": "compiled"}}})
    assert Manifest.from_dict(compiled.to_dict()).builds["cpu"].vm == "compiled"
    with pytest.raises(ArtifactError, match=r"builds\['cpu'\]\.vm is 'jit', not one of compiled, bytecode"):
        Manifest.from_dict({**_manifest(), "builds": {"cpu": {**build, "vm": "jit"}}})
