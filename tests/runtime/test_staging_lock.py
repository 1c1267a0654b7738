"""The lock file cannot hang or redirect a writer, and staging ownership holds across PID namespaces."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import forgeline.runtime as rt
from forgeline.runtime.artifact_io import STAGING_PREFIX, update_manifest
from forgeline.runtime.errors import ArtifactError

CLI = [sys.executable, "-m", "forgeline.cli", "-q"]


def test_a_fifo_lock_file_is_refused_not_waited_on(artifact_copy, tmp_path):
    art = artifact_copy("gpt")
    (art / ".forgeline.lock").unlink(missing_ok=True)
    os.mkfifo(art / ".forgeline.lock")
    manifest = (art / "manifest.json").read_bytes()
    np.savez(tmp_path / "x.npz", input_ids=np.array([[1, 2, 3]], dtype=np.int64))
    # a child process, so that a regression hangs the child (and fails on the timeout), not the suite
    result = subprocess.run(CLI + ["run", str(art), "--inputs", str(tmp_path / "x.npz"), "-o",
                                   str(tmp_path / "y.npz")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr == (f"error: {art}/.forgeline.lock is a FIFO (named pipe), not a regular file; the artifact's "
                             "lock file must be a plain file. Remove it (forgeline creates it again) and retry.\n")
    assert not (tmp_path / "y.npz").exists()
    with pytest.raises(ArtifactError, match="FIFO"):
        update_manifest(art, lambda m: None)  # a writer too
    assert (art / "manifest.json").read_bytes() == manifest
    (art / ".forgeline.lock").unlink()  # what the sentence says to do
    with rt.load(art) as model:
        assert model.selfcheck().passed


def test_a_symlinked_lock_file_is_not_followed(artifact_copy, tmp_path):
    art = artifact_copy("gpt")
    outside = tmp_path / "outside-file"
    (art / ".forgeline.lock").unlink(missing_ok=True)
    (art / ".forgeline.lock").symlink_to(outside)
    manifest = (art / "manifest.json").read_bytes()
    with pytest.raises(ArtifactError, match="lock.* is a symbolic link; .* must be a plain file"):
        update_manifest(art, lambda m: m.versions.__setitem__("note", "x"))
    assert not outside.exists()  # the writer created nothing outside the artifact
    assert (art / "manifest.json").read_bytes() == manifest
    with pytest.raises(ArtifactError, match="symbolic link"):
        rt.load(art, backend="ort")


# A writer in its own PID namespace, started after 300 short processes there, so its pid (~302) names
# no process or thread in the other writer's namespace: a pid-based staleness test takes its folder
# for a dead process's.
WRITER = """
import os, sys
from pathlib import Path
from forgeline.runtime.artifact_io import staging_dir
with staging_dir(Path(sys.argv[1])) as path:
    print(os.getpid(), path, flush=True)
    if sys.stdin.readline().strip() == "die":
        os._exit(9)  # killed: no clean-up
"""
SWEEPER = """
import sys
from pathlib import Path
from forgeline.runtime.artifact_io import staging_dir
with staging_dir(Path(sys.argv[1])) as path:  # a second writer starting: it sweeps stale folders first
    pass
"""


def _in_pid_namespace(script: str, target: Path, *, after_forks: bool = False, **kwargs) -> subprocess.Popen:
    """``script`` in a new PID namespace: python is pid 1 there, or pid ~302 ``after_forks``."""
    python = [sys.executable, "-c", script, str(target)]
    if after_forks:
        python = ["sh", "-c", 'for i in $(seq 300); do /bin/true; done; "$0" "$@"; true', *python]
    return subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", *python], text=True, **kwargs)


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                    reason="needs unshare(1) and root for PID namespaces")
def test_staging_folders_survive_a_writer_in_another_pid_namespace(tmp_path):
    target = tmp_path / "art"
    writer = _in_pid_namespace(WRITER, target, after_forks=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    pid, staged = writer.stdout.readline().split()
    staged = Path(staged)
    assert int(pid) > 300 and staged.name.startswith(STAGING_PREFIX) and staged.is_dir()
    (staged / "half-built").write_text("work in progress")
    sweeper = _in_pid_namespace(SWEEPER, target)
    assert sweeper.wait(120) == 0
    assert (staged / "half-built").read_text() == "work in progress"  # the live writer's folder stays
    writer.stdin.write("die\n")
    writer.stdin.flush()
    writer.wait(60)
    assert staged.is_dir()  # killed: its folder is left behind
    sweeper = _in_pid_namespace(SWEEPER, target)
    assert sweeper.wait(120) == 0
    assert not staged.exists()  # nobody holds its lock: the next writer removes it
    assert [p.name for p in tmp_path.iterdir()] == []
