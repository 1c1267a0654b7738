"""Limits that an edited manifest cannot lift, and inputs refused before they are allocated."""

from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import forgeline.runtime as rt
from forgeline.runtime.errors import ArtifactError, InputError
from forgeline.runtime.limits import DEFAULT_MAX_BATCH

CLI = [sys.executable, "-m", "forgeline.cli", "-q"]
GiB = 1 << 30


def _edit(art, change) -> None:
    data = json.loads((art / "manifest.json").read_text())
    change(data)
    (art / "manifest.json").write_text(json.dumps(data))


def _bounded(gib: int):
    """preexec_fn: the child may map at most ``gib`` GiB of address space (an allocation past it fails)."""
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (gib * GiB, gib * GiB))


@pytest.mark.parametrize("max_positions,seq,said", [
    (10**12, 10**12, "says max_positions=1000000000000"),  # seq 5000 segfaulted
    (64, 65, "allows seq up to 65"),  # seq 65 gave silent garbage
    (65, 64, "says max_positions=65"),  # generation's budget comes from max_positions
])
def test_position_limits_the_manifest_raises_are_refused(artifact_copy, tmp_path, max_positions, seq, said):
    art = artifact_copy("gpt")

    def lift(d):
        d["config"]["max_positions"] = max_positions
        d["dim_limits"]["seq"] = seq
    _edit(art, lift)
    with pytest.raises(ArtifactError, match=f"manifest.json {said}, but the model's position table \\(wpe.weight"):
        rt.load(art, backend="tvm")
    if max_positions != 10**12:
        return  # one CLI run shows the exit status and the one line
    ids = tmp_path / "x.npz"
    np.savez(ids, input_ids=np.ones((1, 65), dtype=np.int64))  # one past the 64-row table
    result = subprocess.run(CLI + ["run", str(art), "--inputs", str(ids), "-o", str(tmp_path / "y.npz")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: manifest.json {said}, but ") and "rebuild the artifact." in result.stderr
    assert not (tmp_path / "y.npz").exists()


def test_batch_beyond_the_limit_is_refused(tiny_artifact):
    with rt.load(tiny_artifact("gpt"), backend="ort") as model:
        assert model.manifest.dim_limits["batch"] == DEFAULT_MAX_BATCH
        ok = model.run(input_ids=np.ones((DEFAULT_MAX_BATCH, 2), dtype=np.int64))["logits"]
        assert ok.shape[:2] == (DEFAULT_MAX_BATCH, 2)
        with pytest.raises(InputError, match=f"batch={DEFAULT_MAX_BATCH + 1} but the model supports at most "
                                             f"batch={DEFAULT_MAX_BATCH} \\(the artifact's batch limit\\)"):
            model.run(input_ids=np.ones((DEFAULT_MAX_BATCH + 1, 2), dtype=np.int64))


def test_a_batch_limit_past_the_ceiling_is_refused(artifact_copy):
    art = artifact_copy("gpt")
    _edit(art, lambda d: d["dim_limits"].__setitem__("batch", 10**12))
    with pytest.raises(ArtifactError, match="batch limit to 1000000000000, outside 1..65536"):
        rt.load(art, backend="ort")


def test_an_npz_that_declares_gigabytes_is_refused_unread(tiny_artifact, tmp_path):
    # input_ids.npy declares (5e7, 8) int64, 3.0 GiB (a 17 MB archive inflated to 3.2 GB);
    # 64 MiB of it is really there: the refusal must come from the header, before any of it is read.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<i8", "fortran_order": False,
                                                  "shape": (50_000_000, 8)})
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("input_ids.npy", header.getvalue() + bytes(64 << 20))
    out = tmp_path / "y.npz"
    out.write_bytes(b"previous outputs")
    result = subprocess.run(CLI + ["run", str(tiny_artifact("gpt")), "--inputs", str(bomb), "-o", str(out)],
                            capture_output=True, text=True, timeout=120, preexec_fn=_bounded(1))
    assert result.returncode == 1, result.stderr
    assert result.stderr == (f"error: --inputs {bomb}: input_ids declares shape (50000000, 8) int64 (3.0 GiB), more "
                             "than the model accepts (batch<=256, seq<=64: at most 128.0 KiB); it was not read. Split "
                             "the inputs into calls within those limits.\n")
    assert out.read_bytes() == b"previous outputs"
