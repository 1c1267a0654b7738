"""The CLI: the main job, run, check, and every bad input refused with one sentence."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from forgeline.cli.app import main


def test_models_lists_every_family(capsys):
    assert main(["models"]) == 0
    printed = capsys.readouterr().out
    for name in ("transformer", "bert", "gpt", "gpt-moe", "bert-moe", "gpt-moe-tc"):
        assert f"\n{name} " in printed
    assert "expert_choice" in printed and "token_choice" in printed


def test_run_writes_outputs(tiny_artifact, tmp_path, capsys):
    path = tiny_artifact("gpt")
    ids = np.array([[1, 2, 3, 4]], dtype=np.int64)
    np.savez(tmp_path / "x.npz", input_ids=ids)
    for backend in ("tvm", "ort"):
        assert main(["-q", "run", str(path), "--inputs", str(tmp_path / "x.npz"), "-o", str(tmp_path / f"{backend}.npz"), "--backend", backend]) == 0
    with np.load(tmp_path / "tvm.npz") as a, np.load(tmp_path / "ort.npz") as b:
        assert a["logits"].shape == (1, 4, 264)
        np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-4, rtol=1e-3)


def test_check_fails_loudly_on_a_wrong_golden_file(artifact_copy, capsys):
    """Replace the eager reference by a wrong one: check must print FAIL and exit non-zero."""
    path = artifact_copy("gpt")
    from forgeline.runtime.format import Manifest
    from forgeline.runtime.golden import load_golden, save_golden

    cases = load_golden(path / "golden.npz")
    cases[0].outputs["logits"] = cases[0].outputs["logits"] + 0.01
    save_golden(path / "golden.npz", cases)
    manifest = Manifest.load(path)
    manifest.record_file(path, "golden.npz")  # a consistent but wrong artifact, not a corrupt one
    manifest.save(path)
    assert main(["-q", "check", str(path), "--fresh", "0"]) == 1
    assert "FAIL" in capsys.readouterr().out


def _error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_unknown_family_and_preset(tmp_path, capsys):
    assert "gpt" in _error(capsys, ["export", "gtp", "-o", str(tmp_path / "a")])
    assert "tiny" in _error(capsys, ["export", "gpt", "--preset", "huge", "-o", str(tmp_path / "b")])


def test_unknown_target(tiny_artifact, capsys):
    assert "cpu" in _error(capsys, ["compile", str(tiny_artifact("gpt")), "--target", "tpu"])


def test_missing_paths(tmp_path, capsys, tiny_artifact):
    assert "does not exist" in _error(capsys, ["check", str(tmp_path / "nowhere")])
    assert "does not exist" in _error(capsys, ["compile", str(tmp_path / "nowhere")])
    assert "does not exist" in _error(capsys, ["run", str(tiny_artifact("gpt")), "--inputs", str(tmp_path / "no.npz"), "-o", str(tmp_path / "y.npz")])
    np.savez(tmp_path / "x.npz", input_ids=np.ones((1, 4), np.int64))
    assert "no manifest.json" in _error(capsys, ["run", str(tmp_path), "--inputs", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz")])


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"input_ids": np.ones((1, 4), np.int32)}, "dtype int32"),
        ({"input_ids": np.ones((4,), np.int64)}, "rank 1"),
        ({"tokens": np.ones((1, 4), np.int64)}, "missing input"),
        ({"input_ids": np.ones((1, 4), np.int64), "x": np.ones((1, 4), np.int64)}, "unexpected input"),
        ({"input_ids": np.full((1, 4), 264, np.int64)}, "outside the valid range"),
        ({"input_ids": np.ones((1, 65), np.int64)}, "at most seq=64"),
    ],
)
def test_run_refuses_bad_inputs(tiny_artifact, tmp_path, capsys, arrays, message):
    np.savez(tmp_path / "x.npz", **arrays)
    err = _error(capsys, ["run", str(tiny_artifact("gpt")), "--inputs", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz")])
    assert message in err
    assert not (tmp_path / "y.npz").exists()


@pytest.mark.parametrize("damage", ["truncate-lib", "edit-onnx", "delete-golden", "garble-manifest"])
def test_damaged_artifact_is_refused(artifact_copy, capsys, tmp_path, damage):
    path = artifact_copy("gpt")
    lib = next((path / "tvm").glob("*/model.so"))
    if damage == "truncate-lib":
        lib.write_bytes(lib.read_bytes()[:1000])
    elif damage == "edit-onnx":
        data = bytearray((path / "model.onnx").read_bytes())
        data[-10] ^= 0xFF
        (path / "model.onnx").write_bytes(bytes(data))
    elif damage == "delete-golden":
        (path / "golden.npz").unlink()
    else:
        (path / "manifest.json").write_text(json.dumps({"format_version": 1})[:-3])
    np.savez(tmp_path / "x.npz", input_ids=np.ones((1, 4), np.int64))
    err = _error(capsys, ["run", str(path), "--inputs", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz")])
    assert "rebuild" in err


def test_target_this_host_cannot_run(artifact_copy, capsys, tmp_path):
    """A cuda build on a host without a GPU: compile succeeds as codegen, run refuses with the reason."""
    from forgeline.runtime.host import describe_host

    if describe_host().cuda_devices:
        pytest.skip("this host has a CUDA device, so a cuda build is runnable here")
    path = artifact_copy("gpt")
    assert main(["-q", "compile", str(path), "--target", "cuda"]) == 0
    capsys.readouterr()
    np.savez(tmp_path / "x.npz", input_ids=np.ones((1, 4), np.int64))
    err = _error(capsys, ["run", str(path), "--inputs", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz"), "--target", "cuda"])
    assert "cuda" in err and "cannot run" in err


def test_runtime_imports_no_torch_onnx_or_relax(tiny_artifact, tmp_path):
    """In a fresh process, load + run + selfcheck leave no torch, onnx or tvm.relax in sys.modules."""
    path = tiny_artifact("gpt-moe")
    script = textwrap.dedent(f"""
        import sys, numpy as np
        import forgeline.runtime as rt
        m = rt.load({str(path)!r})
        out = m.run(input_ids=np.ones((2, 5), np.int64))
        assert out["logits"].shape == (2, 5, 264)
        assert m.selfcheck().passed
        bad = sorted(n for n in sys.modules if n.split(".")[0] in ("torch", "onnx") or n.startswith("tvm.relax"))
        print("LEAKED", bad)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "LEAKED []" in proc.stdout, proc.stdout
