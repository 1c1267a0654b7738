"""ed25519 signatures: unsigned loads by default, a bad signature never loads, a verify key is enforced."""

from __future__ import annotations

import json

import numpy as np
import pytest

import forgeline.runtime as rt
from forgeline.cli.app import main
from forgeline.runtime.errors import ArtifactError
from forgeline.runtime.signing import generate_keypair, sign_artifact

IDS = np.array([[1, 2, 3]], dtype=np.int64)


@pytest.fixture
def keys(tmp_path):
    generate_keypair(tmp_path / "key", tmp_path / "key.pub")
    generate_keypair(tmp_path / "other", tmp_path / "other.pub")
    return tmp_path


def test_signed_artifact_loads_with_its_key_and_only_with_it(artifact_copy, keys):
    art = artifact_copy("gpt")
    with rt.load(art, backend="ort") as model:  # unsigned: loads by default
        want = model.run(input_ids=IDS)["logits"]
    with pytest.raises(ArtifactError, match="not signed"):
        rt.load(art, backend="ort", verify_key=keys / "key.pub")
    sign_artifact(art, keys / "key")
    for backend in ("ort", "tvm"):
        with rt.load(art, backend=backend, verify_key=keys / "key.pub") as model:
            np.testing.assert_allclose(model.run(input_ids=IDS)["logits"], want, atol=1e-4, rtol=1e-3)
    with pytest.raises(ArtifactError, match="another key"):
        rt.load(art, backend="ort", verify_key=keys / "other.pub")


def test_consistent_tamper_is_caught_only_by_the_signature(artifact_copy, keys):
    """An attacker who edits a file *and* its hash passes the hash check, not the signature."""
    from forgeline.runtime.format import Manifest

    art = artifact_copy("gpt")
    sign_artifact(art, keys / "key")
    golden = art / "golden.npz"
    golden.write_bytes(golden.read_bytes() + b"\0")
    manifest = Manifest.load(art)
    manifest.record_file(art, "golden.npz")
    (art / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2))  # keeps manifest.sig
    for key in (None, keys / "key.pub"):  # signed and changed: never loads, key or not
        with pytest.raises(ArtifactError, match="does not match its manifest"):
            rt.load(art, backend="ort", verify_key=key)


def test_a_writer_drops_the_stale_signature(artifact_copy, keys):
    from forgeline.runtime.artifact_io import update_manifest

    art = artifact_copy("gpt")
    sign_artifact(art, keys / "key")
    update_manifest(art, lambda m: m.versions.__setitem__("note", "changed"))
    assert not (art / "manifest.sig").exists()
    with rt.load(art, backend="ort") as model:  # unsigned again, loads by default
        assert model.run(input_ids=IDS)["logits"].shape[:2] == (1, 3)


def test_cli_keygen_sign_check(artifact_copy, tmp_path, capsys):
    art = artifact_copy("gpt")
    assert main(["keygen", str(tmp_path / "k")]) == 0
    assert oct((tmp_path / "k").stat().st_mode & 0o777) == "0o600"
    assert main(["keygen", str(tmp_path / "k")]) == 1  # never overwrites a key
    assert main(["sign", str(art), "--key", str(tmp_path / "k")]) == 0
    assert main(["-q", "check", str(art), "--fresh", "0", "--verify-key", str(tmp_path / "k.pub")]) == 0
    capsys.readouterr()
    assert main(["sign", str(art), "--key", str(tmp_path / "k.pub")]) == 1
    assert "not an unencrypted PEM private key" in capsys.readouterr().err
