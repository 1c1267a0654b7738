"""A full disk, a read-only artifact and SIGTERM/SIGHUP end in one sentence, and nothing is lost.

The full and read-only file systems are real: a small tmpfs mounted in a private mount namespace
(``unshare --mount``, as root), so the test sees the kernel's own ENOSPC and EROFS. A child script
mounts it, puts the files there, runs the CLI and reports what it printed and whether anything on
the mount changed.
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

from forgeline.runtime.artifact_io import STAGING_PREFIX

CLI = [sys.executable, "-m", "forgeline.cli", "-q"]

needs_mounts = pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                                  reason="needs unshare(1) and root to mount a small tmpfs")

CHILD = r"""
import hashlib, json, os, shutil, subprocess, sys
from pathlib import Path

spec = json.loads(sys.argv[1])
mnt = Path(spec["mount"])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
for src, name in spec["copy"]:
    (shutil.copytree if Path(src).is_dir() else shutil.copy)(src, mnt / name)
if "free" in spec:  # fill the disk up to what is left free
    st = os.statvfs(mnt)
    with open(mnt / "filler", "wb") as fh:
        fh.write(bytes(st.f_bavail * st.f_frsize - spec["free"]))
if spec.get("readonly"):
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)

def snapshot():
    return {str(p.relative_to(mnt)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(mnt.rglob("*")) if p.is_file() and p.name != ".forgeline.lock"}

before = snapshot()
result = subprocess.run(spec["argv"], capture_output=True, text=True)
print(json.dumps({"rc": result.returncode, "stderr": result.stderr, "unchanged": snapshot() == before,
                  "entries": sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*"))}))
"""


def _on_small_tmpfs(tmp_path: Path, argv: list[str], copy: list[tuple[Path, str]], **spec) -> dict:
    mount = tmp_path / "mnt"
    mount.mkdir()
    spec = {"mount": str(mount), "copy": [(str(src), name) for src, name in copy], "argv": argv, **spec}
    done = subprocess.run(["unshare", "--mount", sys.executable, "-c", CHILD, json.dumps(spec)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@needs_mounts
def test_compile_on_a_full_disk_says_so(tiny_artifact, tmp_path):
    mnt = tmp_path / "mnt"
    # a recompile of the artifact's own build: the new model.so (~400 kB) does not fit in 100 kB
    report = _on_small_tmpfs(tmp_path, CLI + ["compile", str(mnt / "art")], [(tiny_artifact("gpt"), "art")],
                             free=100_000)
    assert report["rc"] == 1, report
    err = report["stderr"]
    assert err.count("\n") == 1 and err.startswith("error: Exporting the cpu-"), err
    assert "failed because the disk is full; nothing was changed. To fix it, free some space" in err
    assert "C compiler" not in err
    assert report["unchanged"]  # the artifact (and the filler) exactly as before
    assert not [e for e in report["entries"] if STAGING_PREFIX in e]


@needs_mounts
def test_compile_into_a_read_only_artifact_says_so(tiny_artifact, tmp_path):
    mnt = tmp_path / "mnt"
    report = _on_small_tmpfs(tmp_path, CLI + ["compile", str(mnt / "art")], [(tiny_artifact("gpt"), "art")],
                             readonly=True)
    assert report["rc"] == 1, report
    assert report["stderr"].startswith(f"error: writing into {mnt}/art/tvm failed because the file system is "
                                       f"read-only ({mnt}/art/tvm/{STAGING_PREFIX}")
    assert report["stderr"].endswith("nothing was changed. To fix it, copy the artifact to a writable folder (or "
                                     "remount it read-write) and run it there.\n")
    assert report["unchanged"]


@needs_mounts
def test_run_output_on_a_full_disk_keeps_the_previous_file(tiny_artifact, tmp_path):
    mnt = tmp_path / "mnt"
    previous = tmp_path / "y.npz"
    np.savez(previous, logits=np.arange(6.0))
    inputs = tmp_path / "x.npz"
    np.savez(inputs, input_ids=np.ones((64, 64), dtype=np.int64))  # 4.3 MB of logits: more than is free
    argv = CLI + ["run", str(tiny_artifact("gpt")), "--inputs", str(inputs), "-o", str(mnt / "y.npz"),
                  "--backend", "ort"]
    report = _on_small_tmpfs(tmp_path, argv, [(previous, "y.npz")], free=200_000)
    assert report["rc"] == 1, report
    assert report["stderr"] == (f"error: writing -o {mnt}/y.npz failed because the disk is full; nothing was changed. "
                                "To fix it, free some space (or choose a folder on another disk) and run it again.\n")
    assert report["unchanged"] and report["entries"] == ["filler", "y.npz"]  # old output whole, no temp file


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".forgeline.lock"}


def _start(args: list[str], folder: Path, pattern: str, env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list(folder.glob(pattern)):
        if proc.poll() is not None:
            pytest.fail(f"the command ended (rc {proc.returncode}) before it began: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    return proc


def test_sigterm_during_compile_cleans_up_and_says_so(artifact_copy):
    art = artifact_copy("gpt")
    before = _snapshot(art)
    proc = _start(["compile", str(art), "--mcpu", "haswell"], art / "tvm", f"{STAGING_PREFIX}*")
    time.sleep(1.0)  # inside the TVM build
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err == "error: stopped by SIGTERM; nothing was changed.\n"
    assert _snapshot(art) == before
    assert not list((art / "tvm").glob(f"{STAGING_PREFIX}*"))  # the staging folder was removed


def test_sighup_during_tune_cleans_up_and_says_so(artifact_copy, tmp_path):
    art = artifact_copy("gpt")
    before = _snapshot(art)
    tmp = tmp_path / "tmp"  # the tune's log folder goes under TMPDIR
    tmp.mkdir()
    args = ["tune", str(art), "--buckets", "1x8", "--trials", "4", "--tuning-db", str(tmp_path / "db")]
    proc = _start(args, tmp, "forgeline-tune-logs-*", env={**os.environ, "TMPDIR": str(tmp)})
    time.sleep(2.0)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 129, err
    assert err.splitlines()[-1] == "error: stopped by SIGHUP; nothing was changed."
    assert _snapshot(art) == before
    assert not list(tmp.glob("forgeline-tune-logs-*"))  # removed
    assert not [p for p in art.rglob("*") if p.name.startswith(STAGING_PREFIX)]
