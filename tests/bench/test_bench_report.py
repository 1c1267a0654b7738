"""forgeline bench: the report's numbers are well formed and consistent (never how fast)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from forgeline.bench import BenchOptions, bench_artifact, estimate_flops, profile_tvm_kernels
from forgeline.bench.timing import add_ratios, summarize_samples
from forgeline.cli.app import main
from forgeline.runtime.errors import ConfigError
from forgeline.runtime.host import read_cpu_features

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


def test_summary_numbers_match_a_hand_calculation():
    # 5 samples with median 3 ms at batch 2 x seq 8 (16 tokens) and 1 GFLOP per pass:
    # 16 / 0.003 s = 5333.3 tokens/s, 1e9 / 0.003 s = 333.3 GFLOP/s; ORT's median 6 ms -> 0.5x.
    options = BenchOptions(batch=2, seq=8, iters=5)
    tvm = summarize_samples("tvm", [4.0, 1.0, 3.0, 2.0, 5.0], options, 1e9)
    ort = summarize_samples("ort", [6.0, 7.0, 5.0], options, 1e9)
    add_ratios([tvm, ort])
    assert tvm.p50_ms == 3.0 and tvm.mean_ms == 3.0 and ort.p50_ms == 6.0
    assert tvm.tokens_per_s == pytest.approx(16 / 0.003)
    assert tvm.gflops_per_s == pytest.approx(1e9 / 0.003 / 1e9)
    assert tvm.vs_ort == 0.5 and ort.vs_ort == 1.0
    assert tvm.p90_ms == pytest.approx(4.6)  # numpy's linear interpolation: 4 + 0.6 * (5 - 4)


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


def test_a_compiled_build_is_refused_for_profiling_before_anything_runs(tiny_artifact, capsys):
    root = tiny_artifact("gpt")  # built with the default, compiled VM, and nothing beside it
    with pytest.raises(ConfigError, match="--vm bytecode"):
        profile_tvm_kernels(root, BenchOptions(batch=1, seq=SEQ, warmup=1, iters=2))
    assert main(["bench", str(root), "--backends", "tvm", "--profile"]) == 1
    captured = capsys.readouterr()
    assert "--vm bytecode" in captured.err and "p50 ms" not in captured.out  # refused before timing


def test_an_unknown_vm_mode_is_refused_before_any_work(tiny_artifact):
    from forgeline.compile import CompileOptions, compile_artifact
    from forgeline.runtime.format import Manifest

    root = tiny_artifact("gpt")
    before = Manifest.load(root).to_dict()
    with pytest.raises(ConfigError, match="vm='jit' is not one of compiled, bytecode"):
        compile_artifact(root, CompileOptions(vm="jit"))
    assert Manifest.load(root).to_dict() == before


@pytest.fixture(scope="module")
def bytecode_builds(tiny_artifact, tmp_path_factory):
    """A copy of the tiny gpt with a bytecode build beside its compiled fp32 one (and, on AVX2
    hosts, an int8 build in bytecode)."""
    import shutil

    from forgeline.compile import CompileOptions, compile_artifact

    root = tmp_path_factory.mktemp("profile") / "gpt"
    shutil.copytree(tiny_artifact("gpt"), root)
    compile_artifact(root, CompileOptions(vm="bytecode"))
    if "avx2" in read_cpu_features():
        compile_artifact(root, CompileOptions(precision="int8", vm="bytecode"))
    return root


def test_the_bytecode_build_sits_beside_the_compiled_one_and_changes_no_output(bytecode_builds):
    import numpy as np

    from forgeline.runtime import load
    from forgeline.runtime.format import Manifest
    from forgeline.runtime.model import select_build

    manifest = Manifest.load(bytecode_builds)
    fp32 = [b for b in manifest.builds.values() if b.precision == "fp32"]
    assert sorted((b.tag.endswith("-bytecode"), b.vm) for b in fp32) == [(False, "compiled"), (True, "bytecode")]
    assert select_build(manifest, "cpu").vm == "compiled"  # what runs by default
    ids = np.random.default_rng(3).integers(0, 64, size=(2, 9)).astype(np.int64)
    outputs = [load(bytecode_builds, target=b.tag).run(input_ids=ids) for b in fp32]
    for name in outputs[0]:  # the same kernels in the same order: bit for bit
        np.testing.assert_array_equal(outputs[0][name], outputs[1][name])


def test_kernel_profile_names_the_packed_matmuls_and_shares_sum_to_one(bytecode_builds):
    from forgeline.runtime.format import Manifest
    from forgeline.runtime.model import select_build

    kernels = profile_tvm_kernels(bytecode_builds, BenchOptions(batch=1, seq=SEQ, warmup=1, iters=2))
    names = {k.name: k for k in kernels}
    packed = [k for name, k in names.items() if "matmul" in name and name.endswith("_prepacked")]
    assert packed and all(k.calls > 0 for k in packed)  # GEMM schedule on packed weights
    assert sum(k.share for k in kernels) == pytest.approx(1.0)
    assert all(k.ms >= 0 for k in kernels)
    compiled_lib = select_build(Manifest.load(bytecode_builds), "cpu").lib  # not the profiled build's
    with pytest.raises(ConfigError, match="is not a library of .*-bytecode"):
        profile_tvm_kernels(bytecode_builds, BenchOptions(batch=1, seq=SEQ, warmup=1, iters=2), lib=compiled_lib)


@pytest.mark.skipif("avx2" not in read_cpu_features(), reason="a native int8 build needs AVX2 on this CPU")
def test_kernel_profile_follows_the_precision_of_the_backend_asked_for(bytecode_builds):
    options = dict(batch=1, seq=SEQ, warmup=1, iters=2)
    int8 = {k.name for k in profile_tvm_kernels(bytecode_builds, BenchOptions(backends=("ort", "tvm-int8"), **options))}
    fp32 = {k.name for k in profile_tvm_kernels(bytecode_builds, BenchOptions(backends=("tvm",), **options))}
    assert any(name.startswith("int8_") for name in int8)
    assert not any(name.startswith("int8_") for name in fp32)


def test_the_benchmarks_time_the_compiled_build_of_a_precision_before_its_bytecode_sibling():
    from forgeline.bench.peers import precision_build
    from forgeline.runtime.format import BuildRecord, Manifest

    def record(tag, vm):
        return BuildRecord(tag=tag, kind="llvm", target={}, requires={}, lib=f"tvm/{tag}/model.so",
                           precision="int8", vm=vm)

    manifest = Manifest(name="m", preset="tiny", family="gpt", config={}, inputs=[], outputs=[], dim_limits={})
    manifest.builds = {"cpu-int8-bytecode": record("cpu-int8-bytecode", "bytecode"),
                       "cpu-int8": record("cpu-int8", "compiled")}
    assert precision_build(manifest, "int8").tag == "cpu-int8"
    del manifest.builds["cpu-int8"]
    assert precision_build(manifest, "int8").tag == "cpu-int8-bytecode"  # the only one: timed


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


_SPINNING_THREADS = textwrap.dedent("""
    import threading, time
    from forgeline.bench.timing import wait_until_idle

    def spin(stop, seconds):
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline and not stop.is_set():
            pass

    stop = threading.Event()
    spinner = threading.Thread(target=spin, args=(stop, 0.15))
    started = time.perf_counter()
    spinner.start()
    idle = wait_until_idle(timeout_s=2.0)
    waited = time.perf_counter() - started
    spinner.join()
    forever = threading.Thread(target=spin, args=(stop, 60.0))
    forever.start()
    busy = not wait_until_idle(timeout_s=0.1)
    stop.set()
    forever.join()
    print(idle, waited, busy)
""")


def test_blocks_wait_for_another_threads_spinning_to_end():
    # A thread busy for 0.15 s stands in for a thread pool that spins after a run: the wait ends
    # only after it stops, and a thread that never stops runs the wait into its timeout. The wait
    # measures the whole process, so it runs in a fresh one: threads that earlier tests left in
    # this one (thread pools of torch, ONNX Runtime, TVM, XGBoost) are not part of the premise.
    done = subprocess.run([sys.executable, "-c", _SPINNING_THREADS], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    idle, waited, busy = done.stdout.split()
    assert idle == "True" and float(waited) >= 0.12 and busy == "True", done.stdout
