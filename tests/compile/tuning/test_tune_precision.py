"""Tuned buckets of int8 and bf16 builds: the bucket runs the build's reduced-precision dense
kernels, MetaSchedule tunes the fp32 kernels around them, the packed weights are shared with the
build's parameter file, and the bucket matches eager fp32 within the precision's tolerance."""

import shutil

import numpy as np
import pytest

from forgeline.compile import CompileOptions, compile_artifact
from forgeline.compile.tuning import TuneOptions
from forgeline.compile.tuning.precision import build_kernels
from forgeline.define import load_checkpoint
from forgeline.export.eager import run_eager
from forgeline.runtime import load
from forgeline.runtime.format import PRECISION_TOLERANCE, BuildRecord, Manifest
from forgeline.runtime.host import read_cpu_features
from forgeline.runtime.params_file import parse_header

BUCKET = "1x16"
FEATURES = read_cpu_features()
HAS_BF16 = {"amx_bf16", "amx_tile"} <= FEATURES or {"avx512f", "avx512_bf16"} <= FEATURES


@pytest.fixture(scope="module")
def gpt(tiny_artifact, tmp_path_factory):
    """A private copy of gpt tiny and one tuning database for every precision of it."""
    root = tmp_path_factory.mktemp("tune-precision") / "gpt"
    shutil.copytree(tiny_artifact("gpt"), root)
    return root, root.parent / "tuning-db"


def _tuned_bucket_matches_eager(root, precision: str, tag: str) -> float:
    """The bucket serves its shape and stays within ``precision``'s tolerance of eager fp32; worst error."""
    model, tol = load(root, backend="tvm", target=tag), PRECISION_TOLERANCE[precision]
    eager = load_checkpoint(root / "weights.safetensors").eval()
    vocab = model.inputs[0].value_range[1]
    ids = np.random.default_rng(7).integers(0, vocab, size=(1, 16)).astype(np.int64)
    got = model.run(input_ids=ids)["logits"]
    assert model.last_build == BUCKET
    want = run_eager(eager, {"input_ids": ids})["logits"]  # (1, 16, V), eager fp32
    np.testing.assert_allclose(got, want, atol=tol.atol, rtol=tol.rtol)
    return float(np.abs(got - want).max())


def _tune(root, db, precision: str, trials: int) -> tuple[str, dict]:
    tune = TuneOptions(buckets=BUCKET, trials=trials, database=db)
    manifest = compile_artifact(root, CompileOptions(precision=precision), tune=tune)
    (tag,) = [t for t, b in manifest.builds.items() if b.precision == precision]
    build = manifest.builds[tag]
    bucket = build.buckets[BUCKET]
    assert manifest.stages[f"tvm/{tag}/{BUCKET}"].passed
    assert manifest.stages[f"tvm/{tag}/{BUCKET}"].tolerance == PRECISION_TOLERANCE[precision]
    # The packed reduced-precision weights are the build's tensors, stored once in its file:
    # the bucket's own file holds only what a static shape changes (the sliced position table).
    shared = parse_header(root / build.params_file)[0]
    own = parse_header(root / bucket["params_file"])[0] if "params_file" in bucket else {}
    assert all(entry.dtype == "float32" for entry in own.values())
    assert any(shared[key].dtype != "float32" for key in bucket["params"] if key in shared)
    return tag, bucket


@pytest.mark.skipif("avx2" not in FEATURES, reason="int8 needs AVX2 (or AVX512-VNNI) on this CPU")
def test_int8_bucket_tunes_the_fp32_kernels_and_keeps_the_int8_ones(gpt):
    root, db = gpt
    tag, bucket = _tune(root, db, "int8", trials=2)
    assert bucket["trials"] >= 1 and bucket["tasks_tuned"]
    assert not [t for t in bucket["tasks_tuned"] + bucket["tasks_default"] if "int8" in t]
    assert _tuned_bucket_matches_eager(root, "int8", tag) > 1e-4  # int8 ran: fp32 stays at ~1e-6


@pytest.mark.skipif(not HAS_BF16, reason="bf16 needs AVX512-BF16 or AMX on this CPU")
def test_bf16_bucket_reuses_the_records_of_the_fp32_kernels(gpt):
    """The fp32 kernels around bf16 dense layers are the int8 build's: the database already
    holds them, so the bf16 bucket tunes nothing and applies those records."""
    root, db = gpt
    tag, bucket = _tune(root, db, "bf16", trials=1)
    assert bucket["trials"] == 0 and bucket["reused_trials"] >= 1 and bucket["tasks_tuned"]
    assert _tuned_bucket_matches_eager(root, "bf16", tag) > 1e-5  # bf16 ran


@pytest.mark.skipif("avx2" not in FEATURES, reason="int8 needs AVX2 (or AVX512-VNNI) on this CPU")
def test_check_runs_every_precision_and_its_buckets(gpt):
    """`forgeline check`: eager fp32 rerun now, each build and bucket within its own tolerance."""
    from forgeline.check import check_artifact

    root, _ = gpt
    report = check_artifact(root, fresh_cases=1)
    manifest = Manifest.load(root)
    buckets = {f"tvm/{tag}/{BUCKET}": b.precision for tag, b in manifest.builds.items() if b.buckets}
    assert "int8" in buckets.values()
    stages = {s.stage: s for s in report.stages}
    for stage, precision in buckets.items():
        assert stages[stage].passed and stages[stage].tolerance == PRECISION_TOLERANCE[precision]
    assert report.passed


def _record(tag: str, precision: str, features: list[str]) -> BuildRecord:
    return BuildRecord(tag=tag, kind="llvm", target={"kind": "llvm"}, lib="model.so", precision=precision,
                       requires={"arch": "x86_64", "cpu_features": features})


@pytest.mark.parametrize("tag, precision, features, kernels", [
    ("cpu-x", "fp32", ["avx2"], "fp32"),
    ("cpu-x-int8", "int8", ["avx2", "avx512f", "avx512bw", "avx512_vnni"], "int8-vnni"),
    ("cpu-x-int8", "int8", ["avx2", "fma"], "int8-avx2"),
    ("cpu-x-int8", "int8", ["avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_int8", "amx_tile"], "int8-amx"),
    ("cpu-x-int8-vnni", "int8", ["avx2", "avx512f", "avx512bw", "avx512_vnni"], "int8-vnni"),
    ("cpu-x-int8emu", "int8", ["avx2"], "int8-vnni-emulated"),
    ("cpu-x-bf16", "bf16", ["avx512f", "avx512_bf16", "amx_bf16", "amx_tile"], "bf16"),
    ("cpu-x-bf16", "bf16", ["avx512f", "avx512_bf16"], "bf16-avx512bf16"),
    ("cpu-x-bf16-avx512bf16", "bf16", ["avx512f", "avx512_bf16", "amx_bf16", "amx_tile"], "bf16-avx512bf16"),
    ("cpu-x-bf16emu", "bf16", ["avx2"], "bf16-emulated"),
    ("cpu-x-bf16-avx512bf16emu", "bf16", ["avx2"], "bf16-avx512bf16-emulated"),
    ("cpu-x-int8-attnbf16", "int8", ["avx2", "fma"], "int8-avx2+attention-bf16"),
    ("cpu-x-bf16-attnbf16emu", "bf16", ["avx2"], "bf16-emulated+attention-bf16"),
])
def test_a_bucket_runs_the_kernels_its_build_records(tag, precision, features, kernels):
    assert build_kernels(_record(tag, precision, features)) == kernels
