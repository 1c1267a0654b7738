"""benchmarks/peers.py's library part: the table and JSON on a tiny artifact with whatever peers
are installed (ONNX Runtime at least); each output is checked against eager, never timed."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from forgeline.bench.peer_runners import PeerUnavailable, _require
from forgeline.bench.peer_report import (PEER_LOADERS, PeerOptions, bench_peers, markdown_table,
                                         reduced_precision_builds)
from forgeline.runtime.format import Manifest

BATCH, SEQ = 2, 8
_PEER_MODULES = {"openvino-f32": "openvino", "openvino": "openvino", "iree": "iree.runtime"}


@pytest.fixture(scope="module")
def report(tiny_artifact):
    return bench_peers(tiny_artifact("gpt"), PeerOptions(batch=BATCH, seq=SEQ, warmup=1, iters=5))


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module.split(".")[0]) is not None and importlib.util.find_spec(module) is not None


def test_every_backend_has_a_row_in_order(report):
    assert [r.backend for r in report.results] == list(PEER_LOADERS)
    table = markdown_table([report]).splitlines()
    assert len(table) == 2 + len(PEER_LOADERS) + 2
    assert all(f"| {r.backend} |" in line for r, line in zip(report.results, table[2:]))
    positions = (1 + PeerOptions().heldout) * BATCH * SEQ
    assert table[-1].endswith(f"{BATCH}x{SEQ} {positions} positions.")
    assert all(r.positions == positions for r in report.results if r.available and r.backend.startswith("tvm"))


def test_fp32_backends_match_eager(report, tiny_artifact):
    fp32 = ["ort", "tvm"] + [p for p in ("openvino-f32", "iree") if _installed(_PEER_MODULES[p])]
    tol = Manifest.load(tiny_artifact("gpt")).tolerance
    for name in fp32:
        r = report.result(name)
        assert r.available, f"{name}: {r.note}"
        assert r.within_tolerance and r.top1_agreement == 1.0
        assert 0 <= r.max_abs_diff <= tol.atol * 10  # atol + rtol*|logit|, logits of order 1


def test_max_abs_diff_is_ort_against_torch(report, tiny_artifact):
    """Recompute ORT's max abs diff here, from onnxruntime and torch directly."""
    import onnxruntime as ort
    import torch

    from forgeline.bench import bench_inputs
    from forgeline.define import load_checkpoint

    root = tiny_artifact("gpt")
    session = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    model = load_checkpoint(root / "weights.safetensors").eval()
    worst, agree = 0.0, []
    for seed in range(1 + PeerOptions().heldout):  # the timed inputs, then the held-out ones
        inputs = bench_inputs(Manifest.load(root), PeerOptions(batch=BATCH, seq=SEQ, seed=seed))
        got = session.run(None, inputs)[0]
        with torch.no_grad():
            want = model(torch.from_numpy(inputs["input_ids"]))[0].numpy()
        assert got.shape == want.shape == (BATCH, SEQ, 264)
        worst = max(worst, float(np.abs(got - want).max()))
        agree.append(np.argmax(got, -1) == np.argmax(want, -1))
    assert report.result("ort").max_abs_diff == pytest.approx(worst, rel=1e-6, abs=1e-9)
    assert report.result("ort").top1_agreement == pytest.approx(float(np.mean(agree)))


def test_missing_peers_are_reported_not_crashed(report):
    for name, module in _PEER_MODULES.items():
        r = report.result(name)
        if not _installed(module):
            assert not r.available and r.note.startswith("not installed (pip install")
    tuned = report.result("tvm-tuned")  # the shared tiny artifact has no tuned bucket
    assert not tuned.available and f"no tuned build for {BATCH}x{SEQ}" in tuned.note
    with pytest.raises(PeerUnavailable, match="not installed"):
        _require("forgeline_no_such_runtime.sub", "forgeline-no-such-runtime")


def test_ratios_and_json(report):
    ort = report.result("ort")
    ov = report.result("openvino-f32")
    for r in (x for x in report.results if x.available):
        assert r.vs_ort == pytest.approx(r.p50_ms / ort.p50_ms)
        assert r.vs_openvino_f32 == (pytest.approx(r.p50_ms / ov.p50_ms) if ov.available else None)
        assert len(r.samples_ms) == 5 and r.p50_ms == pytest.approx(float(np.median(r.samples_ms)), rel=1e-3)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["batch"] == BATCH and data["model"] == "gpt" and "onnxruntime" in "".join(data["versions"])


def test_reduced_precision_builds_are_listed(tiny_artifact):
    manifest = Manifest.load(tiny_artifact("gpt"))
    assert reduced_precision_builds(manifest) == {}
    build = next(iter(manifest.builds.values()))
    build.precision = "bf16"  # as a --precision bf16 compile records it
    assert reduced_precision_builds(manifest) == {"tvm-bf16": build.tag}
