"""Fault injection: SIGKILL, Ctrl-C and failures in the middle of writes leave the artifact whole.

Each test runs the real CLI in a subprocess, hurts it at a point it polls for (the staging folder
appearing, not a fixed sleep), then asserts that the artifact is byte-for-byte what it was, still
loads and runs on both backends, and that the next writer works.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import forgeline.runtime as rt
from forgeline.runtime.artifact_io import STAGING_PREFIX
from forgeline.runtime.errors import ArtifactError

CLI = [sys.executable, "-m", "forgeline.cli", "-q"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every regular file of the artifact (lock file aside) and its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".forgeline.lock"}


def assert_works(root: Path) -> None:
    """The artifact loads on both backends, and each matches eager PyTorch on the golden cases."""
    for backend in ("ort", "tvm"):
        with rt.load(root, backend=backend) as model:
            assert model.selfcheck().passed, backend
            ids = np.array([[1, 2, 3]], dtype=np.int64)
            assert np.isfinite(model.run(input_ids=ids)["logits"]).all()


def start_and_wait(args: list[str], folder: Path, pattern: str, timeout: float = 240.0,
                   env: dict | None = None) -> subprocess.Popen:
    """Start the CLI; return once ``folder`` holds an entry matching ``pattern`` (the work has begun)."""
    # A shell starts background jobs with SIGINT ignored, and children inherit that; a user's
    # Ctrl-C meets the default handler, so the child gets it back whoever started the tests.
    proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(folder.glob(pattern)):
            return proc
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the command ended (rc {proc.returncode}) before it began to write: {err[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"nothing matching {pattern} appeared in {folder}")


def test_sigkill_during_compile_leaves_the_artifact_as_it_was(artifact_copy):
    art = artifact_copy("gpt")
    before = snapshot(art)
    # a recompile of the build the artifact already has: the old code deleted it first
    proc = start_and_wait(["compile", str(art)], art / "tvm", f"{STAGING_PREFIX}*")
    time.sleep(1.0)  # well inside the TVM build (it takes tens of seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert snapshot(art) == before
    assert_works(art)
    # the next compile is not blocked by the dead process's lock, and clears its staging folder
    from forgeline.compile import CompileOptions, compile_artifact

    manifest = compile_artifact(art, CompileOptions(mcpu="haswell"))
    assert {"cpu-haswell"} < set(manifest.builds)
    assert not list((art / "tvm").glob(f"{STAGING_PREFIX}*"))
    assert_works(art)


def test_ctrl_c_during_compile_is_an_interrupt_and_changes_nothing(artifact_copy):
    art = artifact_copy("gpt")
    before = snapshot(art)
    proc = start_and_wait(["compile", str(art), "--mcpu", "haswell"], art / "tvm", f"{STAGING_PREFIX}*")
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "could not compile" not in err and "Traceback" not in err
    assert snapshot(art) == before
    assert_works(art)


def test_compile_without_a_c_compiler_fails_and_keeps_the_build(artifact_copy, tmp_path):
    art = artifact_copy("gpt")
    before = snapshot(art)
    bare = tmp_path / "bin"  # a PATH holding python alone: no gcc, no cc
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bare)}
    result = subprocess.run(CLI + ["compile", str(art)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 1, result.stderr
    assert "C compiler" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(art) == before
    assert_works(art)
    # build --overwrite whose compile fails: the good artifact is not replaced by one without a build
    args = ["build", "gpt", "-o", str(art), "--overwrite", "--no-generation-graphs"]
    result = subprocess.run(CLI + args, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 1 and "C compiler" in result.stderr, result.stderr
    assert snapshot(art) == before
    assert not [p for p in art.parent.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_sigkill_during_build_overwrite_keeps_the_old_artifact(artifact_copy):
    art = artifact_copy("gpt")
    before = snapshot(art)
    args = ["build", "gpt", "-o", str(art), "--overwrite", "--no-generation-graphs"]
    # wait until the new artifact's compile has begun (its staging folder has a tvm/ part)
    proc = start_and_wait(args, art.parent, f"{STAGING_PREFIX}{art.name}-*/tvm")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert snapshot(art) == before
    assert_works(art)


def test_sigkill_during_tune_leaves_the_artifact_as_it_was(artifact_copy, tmp_path):
    art = artifact_copy("gpt")
    before = snapshot(art)
    args = ["tune", str(art), "--buckets", "1x16", "--trials", "4", "--tuning-db", str(tmp_path / "db")]
    proc = start_and_wait(args, tmp_path, "db")  # the tuning database is opened: tuning has begun
    time.sleep(2.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert snapshot(art) == before
    assert_works(art)


def test_concurrent_compiles_both_land(artifact_copy):
    # Two mcpus any AVX2 host can run, so both builds are checked against eager here (a build
    # for an ISA the host lacks, skylake-avx512 on Zen 3, lands without a parity stage).
    art = artifact_copy("gpt")
    procs = [subprocess.Popen(CLI + ["compile", str(art), "--mcpu", mcpu], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for mcpu in ("x86-64-v2", "haswell")]
    results = [(p.wait(600), p.communicate()) for p in procs]
    for rc, (out, err) in results:
        assert rc == 0, err
        assert "Fast mode segfaults" not in err  # -q silences TVM's C++ warnings
    manifest = rt.Manifest.load(art)
    assert {"cpu-x86-64-v2", "cpu-haswell"} < set(manifest.builds)
    for tag in ("cpu-x86-64-v2", "cpu-haswell"):
        assert manifest.stages[f"tvm/{tag}"].passed
        with rt.load(art, target=tag) as model:
            assert model.selfcheck().passed
    assert_works(art)


def test_stale_lock_of_a_killed_process_does_not_block(artifact_copy):
    from forgeline.runtime.artifact_io import update_manifest

    art = artifact_copy("gpt")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(art / '.forgeline.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    started = time.monotonic()
    manifest = update_manifest(art, lambda m: m.versions.__setitem__("note", "after the kill"))
    assert time.monotonic() - started < 5
    assert rt.Manifest.load(art).versions["note"] == "after the kill" == manifest.versions["note"]
    assert_works(art)


def test_overwrite_refuses_a_folder_that_is_not_a_forgeline_artifact(tmp_path):
    from forgeline.export import ExportOptions, export_model

    webapp = tmp_path / "webapp"
    (webapp / "src").mkdir(parents=True)
    (webapp / "manifest.json").write_text(json.dumps({"name": "webapp", "version": "1.0", "icons": []}))
    (webapp / "src" / "main.js").write_text("console.log('hi')")
    with pytest.raises(ArtifactError, match="not a forgeline artifact"):
        export_model("gpt", webapp, ExportOptions(overwrite=True, generation_graphs=False))
    assert (webapp / "src" / "main.js").read_text() == "console.log('hi')"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_overwrite_replaces_an_old_style_artifact_only_when_complete(artifact_copy):
    from forgeline.export import ExportOptions, export_model

    art = artifact_copy("gpt")
    data = json.loads((art / "manifest.json").read_text())
    data.pop("format")  # an artifact written before the format marker existed
    (art / "manifest.json").write_text(json.dumps(data))
    manifest = export_model("gpt", art, ExportOptions(overwrite=True, generation_graphs=False, seed=5))
    assert manifest.builds == {} and not (art / "tvm").exists()  # a new bundle, whole
    with rt.load(art, backend="ort") as model:
        assert model.selfcheck().passed
    assert not [p for p in art.parent.iterdir() if p.name.startswith((".forgeline-tmp-", ".forgeline-old-"))]


def test_replace_path_swaps_and_restores(tmp_path):
    from forgeline.runtime.artifact_io import replace_path

    old, new = tmp_path / "a", tmp_path / "b"
    old.mkdir()
    (old / "x").write_text("old")
    new.mkdir()
    (new / "x").write_text("new")
    replace_path(new, old)
    assert (old / "x").read_text() == "new" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # the aside copy is gone
    shutil.rmtree(old)
