"""Hugging Face layouts -> forgeline models: logits and greedy text match `transformers` itself.

The references are `transformers` models with seeded random weights (no hub), saved with
save_pretrained and imported through forgeline's declarative tables, which never import transformers.
"""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import transformers  # noqa: E402  (a test dependency: the reference implementation)

from forgeline.define.hf_import import load_hf_checkpoint  # noqa: E402
from forgeline.runtime.errors import ArtifactError  # noqa: E402

ATOL, RTOL = 1e-4, 1e-3  # runtime/format.py DEFAULT_TOLERANCE


def _scramble(model: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, LayerNorms included, so a swapped or skipped tensor shows up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm_scale = "LayerNorm.weight" in name or name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))
            p.copy_(1 + 0.1 * noise if is_norm_scale else 0.2 * noise)


def _saved(model_class, config, seed: int, folder):
    """A transformers model with scrambled seeded weights, saved with save_pretrained into folder."""
    torch.manual_seed(0)
    model = model_class(config).eval()
    _scramble(model, seed)
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory):
    config = transformers.BertConfig(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=80, max_position_embeddings=40, type_vocab_size=2)
    return _saved(transformers.BertForPreTraining, config, 1, tmp_path_factory.mktemp("hf-bert"))


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    config = transformers.GPT2Config(vocab_size=101, n_embd=48, n_layer=3, n_head=4, n_positions=64,
                                     bos_token_id=None, eos_token_id=None)
    return _saved(transformers.GPT2LMHeadModel, config, 2, tmp_path_factory.mktemp("hf-gpt2"))


def _bert_inputs():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 97, (3, 13), generator=g)
    types = torch.cat([torch.zeros(3, 6, dtype=torch.long), torch.ones(3, 7, dtype=torch.long)], 1)
    mask = torch.ones(3, 13, dtype=torch.long)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    return ids, types, mask


@torch.no_grad()
def test_bert_pretraining_logits_match_transformers(hf_bert):
    reference, folder = hf_bert
    ours = load_hf_checkpoint(folder)
    ids, types, mask = _bert_inputs()
    expected = reference(input_ids=ids, token_type_ids=types, attention_mask=mask, output_hidden_states=True)
    hidden, mlm, nsp = ours(ids, types, mask)
    real = mask.bool()  # HF leaves padded query rows to attend as ours do, but compare real tokens only
    torch.testing.assert_close(hidden[real], expected.hidden_states[-1][real], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(mlm[real], expected.prediction_logits[real], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(nsp, expected.seq_relationship_logits, atol=ATOL, rtol=RTOL)
    assert expected.prediction_logits.abs().max() > 1.0  # the comparison is not of near-zero numbers


@torch.no_grad()
def test_gpt2_logits_and_greedy_text_match_transformers(hf_gpt2):
    reference, folder = hf_gpt2
    ours = load_hf_checkpoint(folder)
    assert ours.config.activation == "gelu_tanh" and ours.config.family == "gpt"
    prompt = torch.tensor([[5, 17, 42, 8, 99]])
    ids = torch.randint(0, 101, (2, 20), generator=torch.Generator().manual_seed(4))
    (logits,) = ours(ids)
    expected = reference(input_ids=ids).logits
    # The README states "within 1e-5" (measured 3e-6 to 3.4e-6 on two machines): the same math in
    # fp32, so a bound ten times tighter than the artifact tolerance holds.
    assert float((logits - expected).abs().max()) <= 1e-5
    steps = 24
    generated = prompt
    for _ in range(steps):  # greedy with a full recompute each step
        (logits,) = ours(generated)
        generated = torch.cat([generated, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    hf_generated = reference.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=steps,
                                      min_new_tokens=steps, do_sample=False, pad_token_id=0)
    assert hf_generated.shape[1] == prompt.shape[1] + steps
    assert generated.tolist() == hf_generated.tolist()
    assert len(set(generated[0, 5:].tolist())) > 2  # not a degenerate repeat of one token


def test_bert_without_heads_imports_the_encoder_and_inits_the_heads(tmp_path, hf_bert, caplog):
    reference, folder = hf_bert
    full = load_file(str(folder / "model.safetensors"))
    state = {k[len("bert."):]: v for k, v in full.items() if k.startswith("bert.")}
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_file(state, str(tmp_path / "model.safetensors"))  # the BertModel layout: no prefix, no heads
    ours = load_hf_checkpoint(tmp_path)
    assert "mlm" in caplog.text and "fresh init" in caplog.text
    ids, types, mask = _bert_inputs()
    with torch.no_grad():
        expected = reference.bert(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
        hidden = ours(ids, types, mask)[0]
    torch.testing.assert_close(hidden[mask.bool()], expected[mask.bool()], atol=ATOL, rtol=RTOL)


def test_mismatched_checkpoint_names_every_missing_and_unexpected_key(tmp_path, hf_gpt2):
    _, folder = hf_gpt2
    state = load_file(str(folder / "model.safetensors"))
    del state["transformer.h.1.mlp.c_fc.bias"]
    del state["transformer.ln_f.weight"]
    state["transformer.h.0.attn.rotary.weight"] = torch.zeros(3)
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ArtifactError) as err:
        load_hf_checkpoint(tmp_path)
    message = str(err.value)
    for name in ("h.1.mlp.c_fc.bias", "ln_f.weight", "h.0.attn.rotary.weight"):
        assert name in message
    assert "missing" in message and "unexpected" in message


def test_pickle_is_refused_unread_and_wrong_shapes_are_named(tmp_path, hf_gpt2, monkeypatch):
    _, folder = hf_gpt2
    state = load_file(str(folder / "model.safetensors"))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    torch.save(state, tmp_path / "pytorch_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was opened"))
    with pytest.raises(ArtifactError, match=r"only as a pickle \(pytorch_model\.bin\).*never loads"):
        load_hf_checkpoint(tmp_path)
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:10]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ArtifactError, match=r"wpe\.weight \(10, 48\)"):
        load_hf_checkpoint(tmp_path)


def test_gpt2_artifact_logits_and_generation_match_transformers(tmp_path, hf_gpt2, capsys):
    """`forgeline build gpt --from-hf`, then the compiled artifact: logits, full-recompute greedy
    decoding and the KV-cache generate all give transformers' own numbers and tokens."""
    from forgeline.cli.app import main
    from forgeline.runtime import load

    reference, folder = hf_gpt2
    out = tmp_path / "gpt2"
    assert main(["-q", "build", "gpt", "--from-hf", str(folder), "-o", str(out)]) == 0
    assert "all stages match eager PyTorch" in capsys.readouterr().out
    model = load(out, backend="tvm")
    assert model.manifest.preset == "hf" and model.manifest.config["d_model"] == 48
    assert model.manifest.tokenizer is None  # the folder has no tokenizer.json: ids in, ids out
    ids = torch.randint(0, 101, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = reference(input_ids=ids).logits.numpy()
    torch.testing.assert_close(torch.from_numpy(model.run(input_ids=ids.numpy())["logits"]),
                               torch.from_numpy(expected), atol=ATOL, rtol=RTOL)
    prompt, steps = [5, 17, 42, 8, 99], 20
    hf_out = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 5, dtype=torch.long),
                                max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0)
    hf_new = hf_out[0, 5:].tolist()
    generated = list(prompt)
    for _ in range(steps):  # full recompute through the compiled artifact
        logits = model.run(input_ids=torch.tensor([generated]).numpy())["logits"]
        generated.append(int(logits[0, -1].argmax()))
    assert generated[5:] == hf_new
    assert model.generate(prompt, max_new_tokens=steps).ids == [hf_new]  # the KV-cache graphs


def test_cli_refuses_a_wrong_family_or_folder_with_one_sentence(tmp_path, hf_gpt2, capsys):
    from forgeline.cli.app import main

    _, folder = hf_gpt2
    assert main(["-q", "export", "bert", "--from-hf", str(folder), "-o", str(tmp_path / "a")]) == 1
    assert "holds a dense gpt model, so export it as 'gpt' (or name no model), not 'bert'" in capsys.readouterr().err
    assert main(["-q", "build", "gpt", "--from-hf", str(tmp_path / "nowhere"), "-o", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a folder" in err and "Traceback" not in err


def test_bert_for_masked_lm_layout_keeps_the_mlm_head(tmp_path, hf_bert, caplog):
    """BertForMaskedLM: no pooler, no NSP head. The MLM logits are still transformers' own."""
    reference, folder = hf_bert
    full = load_file(str(folder / "model.safetensors"))
    state = {k: v for k, v in full.items() if not k.startswith(("bert.pooler.", "cls.seq_relationship."))}
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_file(state, str(tmp_path / "model.safetensors"))
    ours = load_hf_checkpoint(tmp_path)
    assert "pooler, nsp" in caplog.text and "next-sentence output is meaningless" in caplog.text
    ids, types, mask = _bert_inputs()
    with torch.no_grad():
        expected = reference(input_ids=ids, token_type_ids=types, attention_mask=mask).prediction_logits
        mlm = ours(ids, types, mask)[1]
    torch.testing.assert_close(mlm[mask.bool()], expected[mask.bool()], atol=ATOL, rtol=RTOL)
