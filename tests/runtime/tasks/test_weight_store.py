"""The weight store: one parameter file per build, libraries of kernels only, mapped and shared.

Expected values come from outside the code under test: the eager checkpoint's bytes (read with
the safetensors package), the safetensors package's own reader, the eager golden outputs, and
the kernel's /proc view of the mappings.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import forgeline.runtime as rt
from forgeline.runtime.errors import ArtifactError
from forgeline.runtime.format import Manifest

IDS = np.array([[5, 1, 7, 3]], dtype=np.int64)


@pytest.fixture(scope="module")
def gpt(gen_artifact) -> Path:
    return gen_artifact("gpt")


def _build(root: Path):
    (build,) = Manifest.load(root).builds.values()
    return build


def _checkpoint(root: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(root / "weights.safetensors"))


def test_libraries_hold_kernels_and_the_parameter_file_holds_the_weights(gpt):
    build = _build(gpt)
    libs = [build.lib, *build.graph_libs.values()]
    assert set(build.lib_params) == set(libs)
    params = (gpt / build.params_file).read_bytes()
    # The largest tensor is the token embedding, tied to the LM head: it is stored once, as the
    # head's GEMM panels (its first 16 or 32 rows transposed, by the AVX2 or AVX-512 schedule),
    # which the token lookup reads too; not also as the table itself.
    embedding = max(_checkpoint(gpt).values(), key=lambda a: a.nbytes)
    panels = [np.ascontiguousarray(embedding[:cols].T).tobytes()[:4096] for cols in (16, 32)]
    (probe,) = [p for p in panels if p in params]
    assert embedding.tobytes()[:4096] not in params
    for lib in libs:
        assert probe not in (gpt / lib).read_bytes(), f"{lib} embeds the token embedding"


def test_one_parameter_file_serves_main_prefill_and_decode_each_tensor_once(gpt):
    from safetensors.numpy import load_file

    build = _build(gpt)
    folder = gpt / build.params_file.rsplit("/", 1)[0]
    assert [p.name for p in folder.rglob("*.safetensors")] == ["params.safetensors"]
    stored = {k: v for k, v in load_file(str(gpt / build.params_file)).items() if not k.startswith("__pad")}
    used = set().union(*map(set, build.lib_params.values()))
    assert used == set(stored)  # nothing stored that no library takes
    digests = {(a.dtype.str, a.shape, a.tobytes()) for a in stored.values()}
    assert len(digests) == len(stored)  # no tensor stored twice
    assert len(stored) < sum(len(keys) for keys in build.lib_params.values())  # libraries share tensors
    # the ONNX graphs share one copy of their weights too
    assert sorted(p.name for p in gpt.glob("*.data")) == ["model.onnx.data"]


def test_tensors_are_aligned_and_read_back_by_safetensors(gpt):
    from safetensors.numpy import load_file

    from forgeline.runtime.params_file import PARAM_ALIGN, ParamsFile

    path = gpt / _build(gpt).params_file
    mapped = ParamsFile(path)
    reference = load_file(str(path))
    for key, entry in mapped.entries.items():
        assert entry.begin % PARAM_ALIGN == 0
        np.testing.assert_array_equal(mapped.array(key), reference[key])


@pytest.fixture
def mapped_weights(monkeypatch):
    monkeypatch.setenv("FORGELINE_WEIGHTS", "map")


def test_outputs_match_eager_and_the_weights_are_mapped_not_copied(gpt, mapped_weights):
    with rt.load(gpt, backend="tvm") as model:
        assert model.selfcheck().passed
        logits = model.run(input_ids=IDS)["logits"]
        mapped = [line for line in Path("/proc/self/maps").read_text().splitlines()
                  if line.endswith("params.safetensors")]
    assert mapped, "the parameter file is not memory-mapped"
    assert np.isfinite(logits).all()


def test_by_default_the_weights_are_read_into_the_process_and_give_the_mapped_outputs(gpt, monkeypatch):
    with rt.load(gpt, backend="tvm") as model:
        assert model.selfcheck().passed
        read = model.run(input_ids=IDS)["logits"]
        assert not _maps_of(gpt / _build(gpt).params_file), "the default read the weights, it does not map them"
    monkeypatch.setenv("FORGELINE_WEIGHTS", "map")
    with rt.load(gpt, backend="tvm") as model:
        np.testing.assert_array_equal(model.run(input_ids=IDS)["logits"], read)


def test_an_unknown_weights_mode_is_refused_with_a_sentence(gpt, monkeypatch):
    monkeypatch.setenv("FORGELINE_WEIGHTS", "mmap-please")
    with pytest.raises(ArtifactError, match="FORGELINE_WEIGHTS='mmap-please' is not one of copy, map"):
        with rt.load(gpt, backend="tvm") as model:
            model.run(input_ids=IDS)


def _maps_of(path: Path) -> list[str]:
    """This process's mappings of the file at ``path`` (the kernel's view)."""
    name = str(path.resolve())
    return [line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(name)]


def test_the_parameter_file_is_unmapped_when_its_last_executor_is_released(gpt, mapped_weights):
    path = gpt / _build(gpt).params_file
    with rt.load(gpt, backend="tvm") as model:
        model.run(input_ids=IDS)
        model.run_graph("prefill", input_ids=IDS, attention_mask=np.ones_like(IDS))
        assert _maps_of(path)
        model.release()  # main and prefill closed: nothing holds the file now
        assert not _maps_of(path), "a released model still maps its parameter file"
        model.run(input_ids=IDS)  # the next call maps it again
        assert _maps_of(path)
    assert not _maps_of(path), "a closed model still maps its parameter file"


_HOLD = """
import sys, numpy as np, forgeline.runtime as rt
model = rt.load(sys.argv[1], backend="tvm")
model.run(input_ids=np.array([[5, 1, 7, 3]], dtype=np.int64))
print("ready", flush=True)
sys.stdin.readline()
"""


def _shared_clean_kb(pid: int | str, name: str) -> int:
    """Shared_Clean of the mappings of file ``name`` in process ``pid`` (kB)."""
    total, inside = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5:
            inside = line.endswith(name)
        elif inside and line.startswith("Shared_Clean:"):
            total += int(line.split()[1])
    return total


def test_two_processes_share_the_parameter_pages(gpt, mapped_weights):
    other = subprocess.Popen([sys.executable, "-c", _HOLD, str(gpt)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # inherits FORGELINE_WEIGHTS=map
    try:
        assert other.stdout.readline().strip() == "ready"
        with rt.load(gpt, backend="tvm") as model:
            model.run(input_ids=IDS)
            # pages mapped by both processes count as shared in each
            assert _shared_clean_kb("self", "params.safetensors") > 0
            assert _shared_clean_kb(other.pid, "params.safetensors") > 0
    finally:
        other.stdin.write("\n")
        other.stdin.flush()
        other.wait(30)


def test_a_changed_parameter_file_is_refused(gpt, tmp_path):
    art = tmp_path / "gpt"
    shutil.copytree(gpt, art)
    path = art / _build(art).params_file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="params.safetensors"):
        rt.load(art, backend="tvm")


def test_the_signature_covers_the_parameter_file(gpt, tmp_path):
    from forgeline.runtime.signing import generate_keypair, sign_artifact

    art = tmp_path / "gpt"
    shutil.copytree(gpt, art)
    generate_keypair(tmp_path / "key", tmp_path / "key.pub")
    sign_artifact(art, tmp_path / "key")
    build = _build(art)
    path = art / build.params_file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    manifest = Manifest.load(art)
    manifest.record_file(art, build.params_file)  # the hash edited to match: only the signature is left
    (art / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2))
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        rt.load(art, backend="tvm", verify_key=tmp_path / "key.pub")


def test_a_parameter_file_outside_the_artifact_is_refused(gpt, tmp_path):
    art = tmp_path / "gpt"
    shutil.copytree(gpt, art)
    manifest = json.loads((art / "manifest.json").read_text())
    (build,) = manifest["builds"].values()
    build["params_file"] = "../elsewhere/params.safetensors"
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="outside|leads out|params"):
        rt.load(art, backend="tvm")


def test_a_corrupt_header_is_refused_with_a_sentence(tmp_path):
    from forgeline.runtime.params_file import parse_header

    path = tmp_path / "params.safetensors"
    path.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(ArtifactError, match="header"):
        parse_header(path)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))  # data not 64-aligned
    with pytest.raises(ArtifactError, match="64-byte"):
        parse_header(path)
