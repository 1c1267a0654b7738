"""`forgeline check` (and a build's own checks) hold one ONNX Runtime session at a time.

Each session holds its own copy of the weights, so the main, prefill and decode graphs are run
one after the other, each session closed before the next opens; every graph still runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from forgeline.runtime.backends.ort import OrtExecutor


@pytest.fixture(scope="module")
def gpt(gen_artifact) -> Path:
    return gen_artifact("gpt")


def test_check_runs_every_graph_with_one_session_alive_at_a_time(gpt, monkeypatch):
    from forgeline.check import check_artifact

    opened, live, most = [], [0], [0]
    init, close = OrtExecutor.__init__, OrtExecutor.close

    def counting_init(self, onnx_path, *args, **kwargs):
        init(self, onnx_path, *args, **kwargs)
        opened.append(Path(onnx_path).name)
        live[0] += 1
        most[0] = max(most[0], live[0])

    def counting_close(self):
        live[0] -= self._session is not None
        close(self)

    monkeypatch.setattr(OrtExecutor, "__init__", counting_init)
    monkeypatch.setattr(OrtExecutor, "close", counting_close)
    report = check_artifact(gpt)
    assert report.passed
    assert sorted(opened) == ["decode.onnx", "model.onnx", "prefill.onnx"]
    assert most[0] == 1 and live[0] == 0
    ort = next(s for s in report.stages if s.stage == "onnxruntime")
    assert {row.case for row in ort.parity} >= {"case0", "fresh0", "fresh1", "case0/generation"}
    tvm = next(s for s in report.stages if s.stage.startswith("tvm/"))
    assert "case0/generation" in {row.case for row in tvm.parity}
