"""forgeline bench: the report's numbers are well formed and consistent (never how fast)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from forgeline.bench import BenchOptions, bench_artifact, estimate_flops, profile_tvm_kernels
from forgeline.cli import main
from forgeline.runtime.errors import ConfigError

BATCH, SEQ = 2, 8


@pytest.fixture(scope="module")
def report(tiny_artifact):
    options = BenchOptions(backends=("eager", "ort", "tvm", "tvm-tuned"), batch=BATCH, seq=SEQ,
                           warmup=1, iters=5)
    return bench_artifact(tiny_artifact("gpt"), options)


def test_every_run_backend_has_positive_ordered_latencies(report):
    ran = [r for r in report.results if r.available]
    assert [r.backend for r in ran] == ["eager", "ort", "tvm"]
    for r in ran:
        assert len(r.samples_ms) == 5 and min(r.samples_ms) > 0
        assert 0 < r.p50_ms <= r.p90_ms <= max(r.samples_ms) + 1e-9
        assert r.p50_ms == pytest.approx(float(np.median(r.samples_ms)), rel=1e-3)


def test_throughput_and_ratios_follow_from_latencies(report):
    ort = report.result("ort")
    for r in (x for x in report.results if x.available):
        assert r.tokens_per_s == pytest.approx(BATCH * SEQ / (r.p50_ms / 1e3))
        assert r.vs_ort == pytest.approx(r.p50_ms / ort.p50_ms)
        assert r.gflops_per_s == pytest.approx(report.flops / (r.p50_ms / 1e3) / 1e9)
    assert ort.vs_ort == pytest.approx(1.0)


def test_missing_tuned_bucket_is_reported_not_timed(report):
    tuned = report.result("tvm-tuned")
    assert not tuned.available and tuned.p50_ms is None
    assert f"no tuned build for {BATCH}x{SEQ}" in tuned.note


def test_report_dict_is_json_with_the_documented_fields(report):
    data = json.loads(json.dumps(report.to_dict()))
    assert {"artifact", "model", "preset", "batch", "seq", "flops", "host", "date",
            "results"} <= set(data)
    assert data["host"]["cores"] >= 1 and data["model"] == "gpt"
    assert {"backend", "available", "p50_ms", "p90_ms", "tokens_per_s", "vs_ort",
            "samples_ms"} <= set(data["results"][0])


def test_flop_estimate_matches_a_hand_count():
    # GPT, d=4, f=8, V=10, 1 layer, T=3, B=2. Per token MACs: 4*16 (attn proj) + 2*3*4 (QK, PV)
    # + 2*4*8 (FFN) + 4*10 (head) = 64 + 24 + 64 + 40 = 192; FLOPs = 2 * 192 * 6 tokens.
    config = {"family": "gpt", "d_model": 4, "d_ff": 8, "vocab_size": 10, "n_layers": 1,
              "router": "none"}
    assert estimate_flops(config, 2, 3) == 2 * 192 * 6
    # The same layer as dense MoE with 3 experts: FFN 3*64 + gate 4*3 = 204 instead of 64.
    moe = dict(config, router="expert_choice", moe_every=1, n_experts=3)
    assert estimate_flops(moe, 2, 3) == 2 * (192 - 64 + 204) * 6  # groups of B = 2: k = min(2, ceil(4/3))
    # Capacity factor 0.5: each expert takes ceil(2 * 0.5 / 3) = 1 of a group's 2 tokens, so the
    # experts compute 3 rows per 2 tokens: FFN 1.5*64 + gate 12 = 108.
    assert estimate_flops(dict(moe, capacity_factor=0.5), 2, 3) == 2 * (192 - 64 + 108) * 6
    assert estimate_flops({"family": "transformer"}, 1, 1) is None


def test_kernel_profile_names_the_packed_matmuls_and_shares_sum_to_one(tiny_artifact):
    kernels = profile_tvm_kernels(tiny_artifact("gpt"), BenchOptions(batch=1, seq=SEQ, warmup=1,
                                                                     iters=2))
    names = {k.name: k for k in kernels}
    packed = [k for name, k in names.items() if "matmul" in name and name.endswith("_prepacked")]
    assert packed and all(k.calls > 0 for k in packed)  # GEMM schedule on packed weights
    assert sum(k.share for k in kernels) == pytest.approx(1.0)
    assert all(k.ms >= 0 for k in kernels)


def test_bad_options_are_one_sentence_errors(tiny_artifact, capsys):
    with pytest.raises(ConfigError, match="unknown backend"):
        bench_artifact(tiny_artifact("gpt"), BenchOptions(backends=("tensorrt",)))
    assert main(["bench", str(tiny_artifact("gpt")), "--seq", "100000"]) == 1
    assert capsys.readouterr().err.startswith("error: seq=100000 exceeds")


def test_cli_writes_json_and_prints_the_table(tiny_artifact, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", str(tiny_artifact("gpt")), "--backends", "ort,tvm", "--seq", str(SEQ),
                 "--warmup", "1", "--iters", "3", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "vs ORT" in printed and "tvm" in printed
    data = json.loads(out.read_text())
    assert [r["backend"] for r in data["results"]] == ["ort", "tvm"]
    assert all(len(r["samples_ms"]) == 3 for r in data["results"])
