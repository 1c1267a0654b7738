"""Tokenizers: byte-level round trips, HF tokenizer.json through `tokenizers`, artifact wiring."""

from __future__ import annotations

import json

import pytest

from forgeline.export.tokenizer_io import write_tokenizer
from forgeline.runtime import ArtifactError, Manifest
from forgeline.runtime.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer, read_tokenizer


def test_byte_round_trip():
    tok = ByteTokenizer()
    for text in ["hello, world", "héllo ✓ 日本", "", "\n\t"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("A é") == [65, 32, 0xC3, 0xA9]
    assert tok.vocab_size == 264 and sorted(tok.special_ids.values()) == list(range(256, 263))
    assert tok.decode([72, tok.special_ids["eos"], 105, 300]) == "Hi"  # specials and beyond dropped
    assert tok.decode([0xC3]) == "\ufffd"  # a cut UTF-8 sequence is replaced, never raises


@pytest.fixture
def wordpiece_json(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "##s"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()  # as in BERT's tokenizer.json: "##s" joins its word
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    path = tmp_path / "wp.json"
    tok.save(str(path))
    return path


def test_hf_wordpiece(wordpiece_json):
    tok = HFTokenizer(wordpiece_json)
    assert tok.encode("the cats sat") == [5, 6, 8, 7]
    assert tok.special_ids == {"pad": 0, "cls": 2, "sep": 3, "mask": 4, "unk": 1}
    assert tok.decode([2, 5, 6, 8, 3]) == "the cats"
    assert tok.encode("dog") == [1]


def test_artifact_tokenizer_files(tmp_path, wordpiece_json):
    assert isinstance(read_tokenizer(tmp_path / write_tokenizer(tmp_path, 264)), ByteTokenizer)
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == {"type": "bytes"}
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    assert isinstance(read_tokenizer(hf_dir / write_tokenizer(hf_dir, 9, wordpiece_json)), HFTokenizer)
    with pytest.raises(ArtifactError, match="vocabulary has 8"):
        write_tokenizer(hf_dir, 8, wordpiece_json)
    with pytest.raises(ArtifactError, match="does not exist"):
        write_tokenizer(hf_dir, 9, tmp_path / "missing.json")


def test_manifest_without_tokenizer(gen_artifact, tmp_path):
    data = json.loads((gen_artifact("gpt") / "manifest.json").read_text())
    for key in ("tokenizer", "graphs"):  # a manifest written before these fields existed
        data.pop(key)
    manifest = Manifest.from_dict(data)
    assert manifest.tokenizer is None and manifest.graphs == {}
    with pytest.raises(ArtifactError, match="carries no tokenizer"):
        load_tokenizer(tmp_path, manifest)
