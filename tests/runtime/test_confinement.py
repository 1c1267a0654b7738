"""Escaping, unlisted, tampered and malformed manifests are refused with a sentence, before native code loads.

The "outside" library is a real shared object whose constructor writes a marker file when it is
loaded, so each refusal is shown to come before any dlopen.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import forgeline.runtime as rt
from forgeline.runtime.errors import ArtifactError

IDS = np.array([[1, 2, 3]], dtype=np.int64)


@pytest.fixture
def evil_so(tmp_path) -> tuple[Path, Path]:
    """A shared library outside any artifact whose constructor writes ``marker``."""
    marker = tmp_path / "constructor-ran"
    src = tmp_path / "evil.c"
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void f(void) '
                   f'{{ FILE *o = fopen("{marker}", "w"); if (o) fclose(o); }}\n')
    lib = tmp_path / "evil.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib, marker


def edit(art: Path, change) -> None:
    data = json.loads((art / "manifest.json").read_text())
    change(data)
    (art / "manifest.json").write_text(json.dumps(data))


def tag_of(art: Path) -> str:
    return next(iter(json.loads((art / "manifest.json").read_text())["builds"]))


def assert_refused(art: Path, match: str, backend: str = "tvm") -> None:
    with pytest.raises(ArtifactError, match=match):
        rt.load(art, backend=backend)


@pytest.mark.parametrize("how", ["absolute", "dotdot", "unlisted-inside"])
def test_build_lib_outside_or_unlisted_is_refused_before_loading(artifact_copy, tiny_artifact, evil_so, how):
    lib, marker = evil_so
    art = artifact_copy("gpt")
    tag = tag_of(art)
    if how == "absolute":
        path = str(lib)
    elif how == "dotdot":
        path = os.path.relpath(lib, art)  # ../evil.so
    else:
        shutil.copy(lib, art / "evil.so")
        path = "evil.so"  # inside, but never hashed
    edit(art, lambda d: d["builds"][tag].__setitem__("lib", path))
    assert_refused(art, "relative, normalised|not listed")
    assert not marker.exists()
    with rt.load(tiny_artifact("gpt"), backend="ort") as model:  # the sound original still runs
        assert model.run(input_ids=IDS)["logits"].shape[:2] == (1, 3)


def test_symlink_leading_out_is_refused(artifact_copy, evil_so):
    lib, marker = evil_so
    art = artifact_copy("gpt")
    so = art / json.loads((art / "manifest.json").read_text())["builds"][tag_of(art)]["lib"]
    so.unlink()
    so.symlink_to(lib)
    assert_refused(art, "symbolic link")
    assert_refused(art, "symbolic link", backend="ort")  # every listed file is confined, for any backend
    assert not marker.exists()


@pytest.mark.parametrize("field,value", [
    ("tokenizer", "/etc/passwd"),
    ("files", {"/etc/hostname": "0" * 64}),
    ("onnx", "../model.onnx"),
    ("files", {"tvm//x.so": "0" * 64}),
])
def test_other_escaping_paths_are_refused(artifact_copy, field, value):
    art = artifact_copy("gpt")

    def change(d):
        if field == "files":
            d["files"].update(value)
        elif field == "onnx":
            d["graphs"] = {"decode": {"onnx": value, "inputs": [], "outputs": []}}
        else:
            d[field] = value
    edit(art, change)
    assert_refused(art, "relative, normalised|not listed", backend="ort")


def test_tampered_library_is_refused(artifact_copy):
    art = artifact_copy("gpt")
    rel = json.loads((art / "manifest.json").read_text())["builds"][tag_of(art)]["lib"]
    data = bytearray((art / rel).read_bytes())
    data[-1] ^= 0xFF
    (art / rel).write_bytes(bytes(data))
    assert_refused(art, "sha256")


@pytest.mark.parametrize("name,change,match", [
    ("files a list", lambda d: d.__setitem__("files", list(d["files"])), "files must be an object"),
    ("dtype int65", lambda d: d["inputs"][0].__setitem__("dtype", "int65"), "int65"),
    ("value_range [0]", lambda d: d["inputs"][0].__setitem__("value_range", [0]), "value_range"),
    ("builds a list", lambda d: d.__setitem__("builds", []), "builds must be an object"),
    ("dim limit a string", lambda d: d["dim_limits"].__setitem__("seq", "64"), "dim_limits"),
    ("other format", lambda d: d.__setitem__("format", "webapp"), "not a forgeline manifest"),
])
def test_wrong_field_types_are_sentences(artifact_copy, name, change, match):
    art = artifact_copy("gpt")
    edit(art, change)
    assert_refused(art, match, backend="ort")


def test_deeply_nested_manifest_is_a_sentence(artifact_copy):
    art = artifact_copy("gpt")
    (art / "manifest.json").write_text('{"format_version": 1, "x": ' + "[" * 200_000 + "]" * 200_000 + "}")
    assert_refused(art, "nests its JSON too deeply", backend="ort")


def _rewrite_golden(art: Path, rename) -> None:
    from forgeline.runtime.format import Manifest

    path = art / "golden.npz"
    with np.load(path) as data:
        arrays = {rename(k): data[k] for k in data.files if rename(k) is not None}
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    manifest = Manifest.load(art)
    manifest.record_file(art, "golden.npz")  # a consistent edit: only the content is wrong
    manifest.save(art)


@pytest.mark.parametrize("rename,match", [
    (lambda k: k.replace("case0", "first"), "named 'first'"),
    (lambda k: None if "/out/" in k else k, "no outputs"),
    (lambda k: None, "no output was compared"),
])
def test_bad_golden_files_fail_closed(artifact_copy, rename, match):
    art = artifact_copy("gpt")
    _rewrite_golden(art, rename)
    with rt.load(art, backend="ort") as model:
        try:
            record = model.selfcheck()
        except ArtifactError as exc:
            assert match in str(exc)
        else:
            assert not record.passed and match in record.parity[0].note
