"""Bucket strings: parsed onto the model's symbolic dims, and bad ones refused with a sentence."""

import pytest

from forgeline.cli.app import main
from forgeline.compile.tuning import TuneOptions, parse_buckets, resolve_tuning
from forgeline.runtime.errors import ConfigError
from forgeline.runtime.format import Manifest, TensorSpec


def _manifest(inputs, limits) -> Manifest:
    specs = [TensorSpec(name, "int64", dims, (0, 10)) for name, dims in inputs]
    return Manifest(name="m", preset="tiny", family="f", config={}, inputs=specs, outputs=[],
                    dim_limits=limits)


GPT = _manifest([("input_ids", ("batch", "seq"))], {"batch": None, "seq": 64})
SEQ2SEQ = _manifest([("src_ids", ("batch", "src_seq")), ("tgt_ids", ("batch", "tgt_seq"))],
                    {"batch": None, "src_seq": 64, "tgt_seq": 64})


def test_buckets_map_onto_dims_in_input_order():
    assert parse_buckets("1x16, 8 x 64", GPT) == [{"batch": 1, "seq": 16}, {"batch": 8, "seq": 64}]
    assert parse_buckets("2x10x12", SEQ2SEQ) == [{"batch": 2, "src_seq": 10, "tgt_seq": 12}]
    # "B x T" on an encoder-decoder: both sequences are T long
    assert parse_buckets("2x10", SEQ2SEQ) == [{"batch": 2, "src_seq": 10, "tgt_seq": 10}]


@pytest.mark.parametrize("text, words", [
    ("1x65", "seq=65"),  # over the position table (dim_limits)
    ("0x16", "batch=0"),
    ("1x16x4", "3 size(s)"),
    ("1by16", "not sizes joined by 'x'"),
    ("1x16,1x16", "given twice"),
    ("", "No bucket"),
])
def test_bad_buckets_are_refused_with_a_sentence(text, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        resolve_tuning(TuneOptions(buckets=text), GPT, "cpu-test")


def test_rpc_flags_must_come_together():
    with pytest.raises(ConfigError, match="needs --rpc-key"):
        resolve_tuning(TuneOptions(buckets="1x16", rpc_tracker="127.0.0.1:9190"), GPT, "cpu-test")
    with pytest.raises(ConfigError, match="not HOST:PORT"):
        resolve_tuning(TuneOptions(buckets="1x16", rpc_tracker="nohost", rpc_key="k"), GPT, "cpu-test")


def test_cli_refuses_a_bad_bucket_with_exit_1(tiny_artifact, capsys):
    path = tiny_artifact("gpt")
    assert main(["-q", "tune", str(path), "--buckets", "1x999", "--trials", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Bucket 1x999 has seq=999") and "Traceback" not in err
    assert main(["-q", "compile", str(path), "--buckets", "1x16"]) == 1  # tuning flag without --tune
    assert "add --tune" in capsys.readouterr().err


def test_database_defaults_to_the_cache_folder_of_the_target(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGELINE_CACHE_DIR", str(tmp_path))
    assert resolve_tuning(TuneOptions(buckets="1x16"), GPT, "cpu-x").database == tmp_path / "tuning" / "cpu-x"
    monkeypatch.delenv("FORGELINE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".cache" / "forgeline" / "tuning" / "cpu-x"
    assert resolve_tuning(TuneOptions(buckets="1x16"), GPT, "cpu-x").database == expected
    explicit = resolve_tuning(TuneOptions(buckets="1x16", database=tmp_path / "db"), GPT, "cpu-x")
    assert explicit.database == tmp_path / "db"
