"""The CLI's bad inputs that used to end in a traceback: each is now one sentence and exit status 1."""

from __future__ import annotations

import numpy as np
import pytest

from forgeline.cli.app import main


def _fails_with(capsys, argv: list[str], *phrases: str) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err
    return err


@pytest.fixture
def inputs(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, input_ids=np.array([[1, 2, 3]], dtype=np.int64))
    return path


def test_run_output_paths(tiny_artifact, tmp_path, inputs, capsys):
    art = str(tiny_artifact("gpt"))
    _fails_with(capsys, ["-q", "run", art, "--inputs", str(inputs), "-o", str(tmp_path / "no" / "y.npz")],
                "does not exist")
    golden = (tiny_artifact("gpt") / "golden.npz").read_bytes()
    _fails_with(capsys, ["-q", "run", art, "--inputs", str(inputs), "-o", f"{art}/golden.npz"], "inside the artifact")
    assert (tiny_artifact("gpt") / "golden.npz").read_bytes() == golden
    assert main(["-q", "run", art, "--inputs", str(inputs), "-o", str(tmp_path / "y"), "--backend", "ort"]) == 0
    assert f"wrote {tmp_path / 'y.npz'}" in capsys.readouterr().out  # the name numpy really writes
    with np.load(tmp_path / "y.npz") as out:
        assert out["logits"].shape[:2] == (1, 3)


def test_run_inputs_that_are_not_an_npz(tiny_artifact, tmp_path, inputs, capsys):
    art = str(tiny_artifact("gpt"))
    np.save(tmp_path / "x.npy", np.array([[1, 2, 3]], dtype=np.int64))
    _fails_with(capsys, ["-q", "run", art, "--inputs", str(tmp_path / "x.npy"), "-o", str(tmp_path / "o.npz")],
                "single array (.npy)")
    (tmp_path / "cut.npz").write_bytes(inputs.read_bytes()[:60])
    _fails_with(capsys, ["-q", "run", art, "--inputs", str(tmp_path / "cut.npz"), "-o", str(tmp_path / "o.npz")],
                "not a readable .npz")


def test_bench_output_folders_are_checked_before_benchmarking(tiny_artifact, tmp_path, capsys):
    import time

    art = str(tiny_artifact("gpt"))
    for flag in ("--json", "--plot"):
        started = time.monotonic()
        _fails_with(capsys, ["-q", "bench", art, flag, str(tmp_path / "missing" / "r.out"), "--iters", "200"],
                    "does not exist")
        assert time.monotonic() - started < 10  # refused up front, no 200 timed runs first


def test_export_output_that_is_a_file_or_a_symlink(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _fails_with(capsys, ["-q", "export", "gpt", "-o", str(tmp_path / "file")], "is a file")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    _fails_with(capsys, ["-q", "export", "gpt", "-o", str(tmp_path / "link"), "--overwrite"], "symbolic link")


def test_unknown_mcpu_is_refused(tiny_artifact, capsys):
    _fails_with(capsys, ["-q", "compile", str(tiny_artifact("gpt")), "--mcpu", "nonsense"], "not a CPU name LLVM knows")


def test_internal_error_is_one_line_and_its_chain_under_verbose(monkeypatch, capsys):
    import forgeline.define

    def broken():
        try:
            raise KeyError("inner cause")
        except KeyError as exc:
            raise RuntimeError("registry is broken") from exc

    monkeypatch.setattr(forgeline.define, "list_models", broken)
    err = _fails_with(capsys, ["models"], "internal error, RuntimeError: registry is broken", "run with -v")
    assert err.count("\n") == 1
    assert main(["-v", "models"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "inner cause" in err and "direct cause" in err


def test_module_help_lists_every_command():
    import subprocess
    import sys

    from forgeline.cli.registry import COMMANDS

    out = subprocess.run([sys.executable, "-m", "forgeline.cli", "--help"], capture_output=True, text=True,
                         timeout=120).stdout
    missing = [name for name, *_ in COMMANDS if f"\n    {name}" not in out]
    assert len(COMMANDS) >= 14 and missing == []
