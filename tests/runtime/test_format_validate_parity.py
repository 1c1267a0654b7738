"""Unit tests of the artifact format, input validation and parity, with hand-made numbers."""

import json

import numpy as np
import pytest

from forgeline.runtime.errors import ArtifactError, InputError, ParityError
from forgeline.runtime.format import Manifest, OutputParity, StageRecord, TensorSpec, Tolerance
from forgeline.runtime.golden import GoldenCase, load_golden, save_golden
from forgeline.runtime.parity import compare_outputs, raise_if_failed, stage_record
from forgeline.runtime.validate import validate_inputs

IDS = TensorSpec("input_ids", "int64", ("batch", "seq"), (0, 10))
MASK = TensorSpec("attention_mask", "int64", ("batch", "seq"))
LIMITS = {"batch": None, "seq": 8}


def _manifest() -> Manifest:
    return Manifest(
        name="gpt", preset="tiny", family="gpt", config={"d_model": 4}, inputs=[IDS],
        outputs=[TensorSpec("logits", "float32", ("batch", "seq", 10))], dim_limits=LIMITS,
    )


def test_manifest_round_trip_and_file_hashes(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"hello")
    m = _manifest()
    m.record_file(tmp_path, "a.bin")
    m.stages["onnxruntime"] = StageRecord("onnxruntime", True, Tolerance(1e-4, 1e-3),
                                          [OutputParity("logits", "case0", 1e-6, 1e-5, 0.0, True)])
    m.save(tmp_path)
    back = Manifest.load(tmp_path)
    assert back.to_dict() == m.to_dict()
    # sha256 of b"hello", computed independently
    assert back.files["a.bin"] == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    back.verify_files(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "edit", "delete"])
def test_verify_files_refuses_damaged_files(tmp_path, damage):
    (tmp_path / "a.bin").write_bytes(b"hello world")
    m = _manifest()
    m.record_file(tmp_path, "a.bin")
    if damage == "truncate":
        (tmp_path / "a.bin").write_bytes(b"hello")
    elif damage == "edit":
        (tmp_path / "a.bin").write_bytes(b"hellO world")
    else:
        (tmp_path / "a.bin").unlink()
    with pytest.raises(ArtifactError, match="a.bin"):
        m.verify_files(tmp_path)


def test_manifest_missing_or_corrupt(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        Manifest.load(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="no manifest.json"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1, "name": "x"}))
    with pytest.raises(ArtifactError, match="malformed"):
        Manifest.load(tmp_path)


def test_golden_round_trip(tmp_path):
    cases = [GoldenCase(f"case{i}", {"x": np.full((i + 1, 2), i)}, {"y": np.ones(i + 1)}) for i in range(11)]
    save_golden(tmp_path / "g.npz", cases)
    back = load_golden(tmp_path / "g.npz")
    assert [c.name for c in back] == [f"case{i}" for i in range(11)]  # numeric, not lexical, order
    np.testing.assert_array_equal(back[10].inputs["x"], np.full((11, 2), 10))
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ArtifactError):
        load_golden(tmp_path / "bad.npz")


def _ids(b, t, value=1):
    return np.full((b, t), value, dtype=np.int64)


def test_validate_accepts_and_orders():
    out = validate_inputs({"attention_mask": _ids(2, 3), "input_ids": _ids(2, 3)}, [IDS, MASK], LIMITS)
    assert [a.shape for a in out] == [(2, 3), (2, 3)]


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"input_ids": _ids(1, 3)}, "missing input"),
        ({"input_ids": _ids(1, 3), "attention_mask": _ids(1, 3), "x": _ids(1, 3)}, "unexpected input"),
        ({"input_ids": _ids(1, 3).astype(np.int32), "attention_mask": _ids(1, 3)}, "dtype int32 but the model expects int64"),
        ({"input_ids": _ids(1, 3)[0], "attention_mask": _ids(1, 3)}, "rank 1"),
        ({"input_ids": _ids(1, 9), "attention_mask": _ids(1, 9)}, "at most seq=8"),
        ({"input_ids": _ids(1, 3), "attention_mask": _ids(1, 4)}, "must agree"),
        ({"input_ids": _ids(1, 3, value=10), "attention_mask": _ids(1, 3)}, r"outside the valid range \[0, 10\)"),
        ({"input_ids": _ids(1, 3, value=-1), "attention_mask": _ids(1, 3)}, "outside the valid range"),
        ({"input_ids": _ids(1, 0), "attention_mask": _ids(1, 0)}, "empty axis"),
    ],
)
def test_validate_refuses_bad_input(arrays, message):
    with pytest.raises(InputError, match=message):
        validate_inputs(arrays, [IDS, MASK], LIMITS)


def test_parity_values_against_hand_computation():
    want = {"y": np.array([1.0, -2.0, 100.0], np.float32)}
    got = {"y": np.array([1.00005, -2.0, 100.05], np.float32)}
    (row,) = compare_outputs(want, got, Tolerance(1e-4, 1e-3), "c")
    # 100.05 - 100 = 0.05 <= 1e-4 + 1e-3 * 100 = 0.1001 ; 5e-5 <= 1e-4 + 1e-3
    assert row.passed
    assert row.max_abs == pytest.approx(0.05, rel=1e-3)
    assert row.max_rel == pytest.approx(5e-4, rel=1e-2)
    got["y"][1] = -2.01  # 0.01 > 1e-4 + 2e-3
    (row,) = compare_outputs(want, got, Tolerance(1e-4, 1e-3), "c")
    assert not row.passed and row.frac_over == pytest.approx(1 / 3)


def test_parity_gathers_names_shapes_and_routing_flips():
    want = {"logits": np.zeros((2, 3), np.float32), "routing.0": np.array([[1, 0], [0, 1]]), "gone": np.zeros(1)}
    got = {"logits": np.zeros((2, 4), np.float32), "routing.0": np.array([[1, 0], [1, 1]]), "extra": np.zeros(1)}
    rows = compare_outputs(want, got, Tolerance(1e-4, 1e-3), "c")
    by_name = {r.output: r for r in rows}
    assert set(by_name) == {"logits", "routing.0", "gone", "extra"}
    assert not any(r.passed for r in rows)
    assert "shape" in by_name["logits"].note
    assert by_name["routing.0"].exact and "1 routing decisions differ" in by_name["routing.0"].note
    record = stage_record("tvm/x", rows, Tolerance(1e-4, 1e-3))
    with pytest.raises(ParityError) as info:
        raise_if_failed(record)
    for name in ("logits", "routing.0", "gone", "extra"):
        assert name in str(info.value)
