"""Tuning measured through a TVM RPC tracker and device server, both on loopback."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from forgeline.compile.tuning import TuneOptions, tune_artifact
from forgeline.runtime.format import Manifest

KEY = "forgeline-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_device(port: int, processes, timeout_s: float = 90.0) -> None:
    from tvm import rpc

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in processes:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[2]} exited early with status {proc.returncode}")
        try:
            if KEY in str(rpc.connect_tracker("127.0.0.1", port).summary()["server_info"]):
                return
        except Exception:  # noqa: BLE001 - the tracker is not listening yet
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no RPC server registered key {KEY} with the tracker on port {port}")


@pytest.fixture
def rpc_tracker(tmp_path):
    """A tracker and one device server on 127.0.0.1; both stopped by PID afterwards."""
    port, server_port = _free_port(), _free_port()
    started = []
    log = open(tmp_path / "rpc_server.log", "w")
    try:
        # Each gets its own process group: tracker and server serve from a child process
        # (TVM's PopenWorker) that outlives a parent stopped alone.
        started.append(subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                                         "--port", str(port), "--port-end", str(port + 1)],
                                        start_new_session=True))
        started.append(subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(server_port),
             "--port-end", str(server_port + 1), "--tracker", f"127.0.0.1:{port}", "--key", KEY],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        _wait_for_device(port, started)
        yield port, tmp_path / "rpc_server.log"
    finally:
        for proc in reversed(started):
            _stop_group(proc)
        log.close()


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the process group this test started (by its id): the process and its server child."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group's serving child, if it is still there
    except ProcessLookupError:
        pass
    proc.wait()


def test_tuning_measures_through_the_rpc_tracker(rpc_tracker, tiny_artifact, tmp_path):
    port, server_log = rpc_tracker
    root = tmp_path / "gpt"
    shutil.copytree(tiny_artifact("gpt"), root)
    tag = next(iter(Manifest.load(root).builds))
    options = TuneOptions(buckets="1x8", trials=2, database=tmp_path / "db",
                          rpc_tracker=f"127.0.0.1:{port}", rpc_key=KEY)
    manifest = tune_artifact(root, tag, options)
    bucket = manifest.builds[tag].buckets["1x8"]
    assert bucket["trials"] >= 1
    # A kernel counts as tuned only when a candidate ran and was timed: here, on the RPC server.
    assert bucket["tasks_tuned"]
    assert manifest.stages[f"tvm/{tag}/1x8"].passed
    assert "load_module" in server_log.read_text()  # the server loaded the candidates it timed
