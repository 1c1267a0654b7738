"""BART checkpoints as switches of the encoder-decoder Transformer: eager logits are transformers'
own, `forgeline build --from-hf FOLDER` (no model name) gives an artifact whose ONNX Runtime and
TVM logits match them at two shapes, and `translate` through its KV-cache graphs gives the tokens
of transformers' greedy `generate`.

The config keeps BART's own switches (learned positions offset by 2, one table per side, no
embedding scale, a LayerNorm on each side's embeddings, GELU, the tied head plus
final_logits_bias), with more decoder than encoder layers; final_logits_bias is random so a
dropped bias shows. Greedy decoding of an untrained post-LN model with tied embeddings settles on
one or two tokens per source (every seed tried), so the KV-cache graphs are also checked step by
step along a fixed random target, each step's logits against transformers'.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from forgeline.define.hf_import import load_hf_checkpoint

from .hf_fixtures import ATOL, RTOL, build_from_hf, save_reference
from .test_hf_refusals import _edit_config, _refused

VOCAB, STEPS, START, EOS = 120, 24, 2, 2
_SIZES = dict(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4,
              decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)
SOURCES = [[5, 17, 42, 8, 99, 23, 61], [77, 3, 14, 15, 92, 65, 35, 89, 79, 32, 38]]


def _save_bart(folder, seed: int, **config):
    """(transformers BART, folder): scrambled weights and a random final_logits_bias, saved."""
    reference, _ = save_reference(transformers.BartForConditionalGeneration,
                                  transformers.BartConfig(**{**_SIZES, **config}), seed, folder)
    with torch.no_grad():
        reference.final_logits_bias.normal_(generator=torch.Generator().manual_seed(seed))
    reference.save_pretrained(folder)
    return reference, folder


def _word_tokenizer(path) -> None:
    """A tokenizer.json with BART's specials (<s> 0, <pad> 1, </s> 2) and one word per other id."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    specials = ["<s>", "<pad>", "</s>"]
    tok = Tokenizer(models.WordLevel({**{t: i for i, t in enumerate(specials)}, **{f"t{i}": i for i in range(3, VOCAB)}},
                                     unk_token="<pad>"))
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.save(str(path))


@pytest.fixture(scope="session")
def hf_bart(tmp_path_factory):
    reference, folder = _save_bart(tmp_path_factory.mktemp("hf-bart"), seed=43)  # greedy text of 3 and 5 distinct tokens
    _word_tokenizer(folder / "tokenizer.json")
    return reference, folder


def _pair(batch: int, src: int, tgt: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, src), generator=g), torch.randint(3, VOCAB, (batch, tgt), generator=g)


_SHAPES = ((1, 9, 5, 1), (3, 31, 17, 2))  # batch, source, target, seed


@torch.no_grad()
def _expected(reference, src, tgt) -> torch.Tensor:
    return reference(input_ids=src, decoder_input_ids=tgt).logits  # (B, T, V)


@torch.no_grad()
def hf_translate(reference, source: list[int], steps: int) -> list[int]:
    """transformers' greedy generate, with none of BART's forced tokens or n-gram bans. The model's
    own generation_config is replaced: generate fills a None it is passed from it (forced_eos_token_id)."""
    reference.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=START, eos_token_id=EOS, pad_token_id=1, bos_token_id=0, forced_bos_token_id=None,
        forced_eos_token_id=None, no_repeat_ngram_size=0, do_sample=False, num_beams=1, max_new_tokens=steps)
    ids = torch.tensor([source])
    out = reference.generate(ids, attention_mask=torch.ones_like(ids))
    assert out[0, 0] == START
    return out[0, 1:].tolist()


@torch.no_grad()
def _eager_translate(model, source: list[int], steps: int) -> list[int]:
    """Greedy decoding through forgeline's eager encode, decoder_prefill and decoder_step."""
    memory = model.encode(torch.tensor([source]))
    logits, cache = model.decoder_prefill(torch.tensor([[START]]), memory)
    new = []
    for _ in range(steps):
        new.append(int(logits[0, -1].argmax()))
        logits, cache = model.decoder_step(torch.tensor([new[-1:]]), memory, cache)
    return new


@torch.no_grad()
def test_eager_logits_and_kv_greedy_tokens_match_transformers(hf_bart):
    reference, folder = hf_bart
    ours = load_hf_checkpoint(folder)
    c = ours.config
    assert (c.family, c.n_layers, c.n_decoder_layers, c.position_offset, c.scale_embedding) == ("transformer", 1, 2, 2, False)
    assert (c.decoder_start_id, c.eos_id, c.activation) == (START, EOS, "gelu")
    for batch, src_len, tgt_len, seed in _SHAPES:
        src, tgt = _pair(batch, src_len, tgt_len, seed)
        expected = _expected(reference, src, tgt)
        torch.testing.assert_close(ours(src, tgt)[0], expected, atol=ATOL, rtol=RTOL)
    assert expected.abs().max() > 1.0  # the comparison is not of near-zero numbers
    expected_rows = [hf_translate(reference, source, STEPS) for source in SOURCES]
    assert all(len(row) == STEPS for row in expected_rows)  # no early eos: every step compared
    assert len({t for row in expected_rows for t in row}) > 3  # not one repeated token
    assert [_eager_translate(ours, source, STEPS) for source in SOURCES] == expected_rows


@torch.no_grad()
def test_scaled_embeddings_and_a_deeper_encoder(tmp_path):
    """scale_embedding (sqrt(d_model)) and more encoder than decoder layers, eager only."""
    reference, folder = _save_bart(tmp_path / "bart", seed=43, scale_embedding=True, encoder_layers=3, decoder_layers=1)
    ours = load_hf_checkpoint(folder)
    assert (ours.config.scale_embedding, ours.config.n_layers, ours.config.n_decoder_layers) == (True, 3, 1)
    src, tgt = _pair(2, 12, 6, 7)
    torch.testing.assert_close(ours(src, tgt)[0], _expected(reference, src, tgt), atol=ATOL, rtol=RTOL)


@pytest.fixture(scope="session")
def bart_artifact(hf_bart, tmp_path_factory):
    reference, folder = hf_bart
    return reference, build_from_hf(folder, tmp_path_factory.mktemp("bart-artifact") / "out")


@pytest.mark.parametrize("backend", ["ort", "tvm"])
def test_built_bart_logits_and_translation_match_transformers(bart_artifact, backend):
    from forgeline.runtime import load

    reference, out = bart_artifact
    with load(out, backend=backend) as model:
        assert (model.manifest.name, model.manifest.family, model.manifest.preset) == ("bart", "transformer", "hf")
        for batch, src_len, tgt_len, seed in _SHAPES:
            src, tgt = _pair(batch, src_len, tgt_len, seed)
            expected = _expected(reference, src, tgt).numpy()
            logits = model.run(src_ids=src.numpy(), tgt_ids=tgt.numpy())["logits"]
            np.testing.assert_allclose(logits, expected, atol=ATOL, rtol=RTOL)
        # the start and end ids are the checkpoint's, not its tokenizer's bos (<s>, 0)
        assert model.translate(SOURCES, STEPS).ids == [hf_translate(reference, s, STEPS) for s in SOURCES]
        # text goes through the shipped tokenizer.json, framed <s> ... </s> as BART's tokenizer does
        text = model.translate(" ".join(f"t{i}" for i in SOURCES[0]), STEPS).text[0]
        assert text.split() == [f"t{i}" for i in hf_translate(reference, [0, *SOURCES[0], 2], STEPS)]
        _check_kv_graphs_teacher_forced(model, reference)


def _check_kv_graphs_teacher_forced(model, reference) -> None:
    """encode + prefill + decode graphs along a fixed target: every step's logits are transformers'."""
    src, tgt = _pair(2, 13, 20, 5)
    expected = _expected(reference, src, tgt).numpy()  # (B, T, V)
    memory = model.run_graph("encode", src_ids=src.numpy())["memory"]
    out = model.run_graph("prefill", tgt_ids=tgt[:, :4].numpy(), memory=memory)
    np.testing.assert_allclose(out["logits"], expected[:, :4], atol=ATOL, rtol=RTOL)
    for t in range(4, tgt.shape[1]):
        out = model.run_graph("decode", tgt_ids=tgt[:, t:t + 1].numpy(), memory=memory, past_kv=out["present"])
        np.testing.assert_allclose(out["logits"][:, 0], expected[:, t], atol=ATOL, rtol=RTOL)


def test_api_build_records_the_bart_switches(bart_artifact):
    _, out = bart_artifact
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert (config["split_positions"], config["embedding_norm"], config["logits_bias"]) == (True, True, True)


def test_the_offset_rows_are_no_positions(bart_artifact, tmp_path):
    """The 66-row tables hold 64 positions: a manifest raised to 66 is refused at load."""
    from forgeline.runtime import load
    from forgeline.runtime.errors import ArtifactError

    art = shutil.copytree(bart_artifact[1], tmp_path / "art")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["config"]["max_positions"] = 66
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"max_positions=66, but .*pos.weight .* holds 64 positions"):
        load(art, backend="ort")


@pytest.fixture
def bart_copy(hf_bart, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(hf_bart[1], dst)
    return dst


def test_missing_tensor_and_wrong_shape(bart_copy, tmp_path, capsys):
    path = bart_copy / "model.safetensors"
    original = load_file(str(path))
    state = {k: v for k, v in original.items() if k != "model.decoder.layers.1.encoder_attn.v_proj.bias"}
    save_file(state, str(path))
    _refused(bart_copy, tmp_path, capsys, "missing keys ['decoder.layers.1.encoder_attn.v_proj.bias']")
    state = {**original, "model.decoder.embed_positions.weight": torch.zeros(64, 32)}  # no room for the offset
    save_file(state, str(path))
    _refused(bart_copy, tmp_path, capsys, "decoder_pos.weight (64, 32) (model expects (66, 32))")


@pytest.mark.parametrize("changes, fragment", [
    ({"decoder_attention_heads": 2}, "attention heads or FFN width differ from the encoder's"),
    ({"tie_word_embeddings": False}, "LM head untied from its embeddings"),
])
def test_bart_features_forgeline_does_not_map_are_refused(bart_copy, tmp_path, capsys, changes, fragment):
    _edit_config(bart_copy, **changes)
    _refused(bart_copy, tmp_path, capsys, fragment)
