"""Tuning gpt tiny at one bucket: dispatch by shape, parity with eager PyTorch, the manifest's
bucket record, and a second compile that reuses the database instead of tuning again."""

import hashlib
import shutil

import numpy as np
import pytest

from forgeline.cli.app import main
from forgeline.compile.tuning import TuneOptions, tune_artifact
from forgeline.define import load_checkpoint
from forgeline.export.eager import run_eager
from forgeline.runtime import load
from forgeline.runtime.format import Manifest, sha256_file

BUCKET, DIMS = "1x16", {"batch": 1, "seq": 16}
TRIALS = 4  # one round of candidates: enough to measure real schedules, cheap enough for CI


@pytest.fixture(scope="module")
def tuned(tiny_artifact, tmp_path_factory):
    """A private copy of gpt tiny with a tuned 1x16 build, and its tuning database folder."""
    root = tmp_path_factory.mktemp("tune") / "gpt"
    shutil.copytree(tiny_artifact("gpt"), root)
    db = root.parent / "tuning-db"
    tag = next(iter(Manifest.load(root).builds))
    tune_artifact(root, tag, TuneOptions(buckets=BUCKET, trials=TRIALS, database=db))
    return root, tag, db


def _eager_logits(root, ids: np.ndarray) -> np.ndarray:
    model = load_checkpoint(root / "weights.safetensors").eval()
    return run_eager(model, {"input_ids": ids})["logits"]


def test_bucket_shape_runs_the_bucket_build_others_the_dynamic_one(tuned):
    root, tag, _ = tuned
    model = load(root, backend="tvm", target=tag)
    tol = model.manifest.tolerance
    vocab = model.inputs[0].value_range[1]
    rng = np.random.default_rng(11)
    for shape, served_by in (((1, 16), BUCKET), ((2, 16), "dynamic"), ((1, 9), "dynamic")):
        ids = rng.integers(0, vocab, size=shape).astype(np.int64)
        logits = model.run(input_ids=ids)["logits"]
        assert model.last_build == served_by
        np.testing.assert_allclose(logits, _eager_logits(root, ids), atol=tol.atol, rtol=tol.rtol)


def test_manifest_records_the_bucket(tuned):
    root, tag, db = tuned
    manifest = Manifest.load(root)
    manifest.verify_files(root)
    bucket = manifest.builds[tag].buckets[BUCKET]
    assert bucket["dims"] == DIMS
    assert bucket["lib"] == f"tvm/{tag}/bucket-{BUCKET}.so"
    assert manifest.files[bucket["lib"]] == sha256_file(root / bucket["lib"])
    assert 1 <= bucket["trials"] and bucket["tuning_seconds"] > 0
    assert bucket["tasks_tuned"], "a measured round must leave at least one tuned kernel"
    assert not set(bucket["tasks_tuned"]) & set(bucket["tasks_default"])
    # By default the matmuls keep the GEMM schedule and are not searched.
    assert bucket["gemm_schedule"] and all("matmul" in name for name in bucket["gemm_schedule"])
    assert not [t for t in bucket["tasks_tuned"] + bucket["tasks_default"] if "matmul" in t]
    digest = hashlib.sha256()
    for name in ("database_workload.json", "database_tuning_record.json"):
        digest.update(name.encode() + b"\0" + (db / name).read_bytes())
    assert bucket["database_sha256"] == digest.hexdigest()
    stage = manifest.stages[f"tvm/{tag}/{BUCKET}"]
    assert stage.passed and stage.parity and all(row.max_abs <= 1e-4 for row in stage.parity)


def test_second_compile_reuses_the_database(tuned, capsys):
    root, tag, db = tuned
    records = db / "database_tuning_record.json"
    measured_before = records.read_text()
    tuned_before = Manifest.load(root).builds[tag].buckets[BUCKET]["tasks_tuned"]
    assert main(["-q", "compile", str(root), "--tune", "--buckets", "1 x 16", "--trials", str(TRIALS),
                 "--tuning-db", str(db)]) == 0
    assert "bucket 1x16" in capsys.readouterr().out
    bucket = Manifest.load(root).builds[tag].buckets[BUCKET]
    assert bucket["trials"] == 0 and bucket["tuning_seconds"] == 0
    assert bucket["reused_trials"] >= 1 and bucket["tasks_tuned"] == tuned_before
    assert records.read_text() == measured_before  # not one new measurement


def test_check_reruns_eager_and_checks_the_bucket_at_its_shape(tuned):
    from forgeline.check import check_artifact

    root, tag, _ = tuned
    report = check_artifact(root, fresh_cases=1)
    stages = {s.stage: s for s in report.stages}
    assert set(stages) == {"golden.npz", "onnxruntime", f"tvm/{tag}", f"tvm/{tag}/{BUCKET}"}
    bucket = stages[f"tvm/{tag}/{BUCKET}"]
    assert bucket.passed and {row.case for row in bucket.parity} == {"bucket0", "bucket1"}
    assert report.passed


def test_check_compares_with_eager_now_not_with_the_stored_golden(tuned, tmp_path):
    """golden.npz outputs edited (hash fixed up): the backends still match eager, which `check`
    reruns, and the stored golden itself is reported as no longer eager's."""
    from forgeline.check import check_artifact
    from forgeline.runtime.golden import load_golden, save_golden

    root, _, _ = tuned
    copy = tmp_path / "edited"
    shutil.copytree(root, copy)
    cases = load_golden(copy / "golden.npz")
    for case in cases:
        case.outputs["logits"] = case.outputs["logits"] + 1.0
    save_golden(copy / "golden.npz", cases)
    manifest = Manifest.load(copy)
    manifest.record_file(copy, "golden.npz")
    manifest.save(copy)
    assert not load(copy, backend="ort").selfcheck().passed  # selfcheck reads the stored outputs
    report = check_artifact(copy, fresh_cases=0)
    assert [s.stage for s in report.stages if not s.passed] == ["golden.npz"]
