"""Llama, Mistral, Qwen2 and GPT-NeoX checkpoints: eager logits and greedy tokens are transformers' own, and
`forgeline build --from-hf FOLDER` (no model name) gives an artifact whose ONNX Runtime and TVM
logits and KV-cache generation match transformers too.

Configs are tiny and use grouped-query attention (4 query heads on 2 KV heads), a rope_theta
other than the default, and, between them, tied and untied heads, QKV bias and sharded weights;
the GPT-NeoX has parallel attention + FFN and rotates half of each head (partial rotary).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

from forgeline.define.hf_import import load_hf_checkpoint

from .hf_fixtures import ATOL, RTOL, build_from_hf, hf_greedy, save_reference

VOCAB, STEPS = 120, 24
_SIZES = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=64, max_position_embeddings=64, bos_token_id=None, eos_token_id=None)
_ROPE = {"rope_type": "default", "rope_theta": 5000.0}
_ARCHS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(tie_word_embeddings=False)),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, dict(sliding_window=48)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
    "gpt_neox": (transformers.GPTNeoXConfig, transformers.GPTNeoXForCausalLM, dict(num_key_value_heads=None)),
}

_SEEDS = {"llama": 11, "mistral": 12, "qwen2": 13, "gpt_neox": 11}  # weights whose greedy text is not one repeated token


def _word_tokenizer(path) -> None:
    """A tokenizer.json with one word per id (t0 .. t119), so text round-trips through the artifact."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.save(str(path))


@pytest.fixture(scope="session")
def hf_decoder(tmp_path_factory):
    """model_type -> (transformers model, its save_pretrained folder), built once."""
    made = {}

    def get(arch: str):
        if arch not in made:
            config_class, model_class, extra = _ARCHS[arch]
            sizes = {k: v for k, v in {**_SIZES, **extra}.items() if v is not None}  # GPT-NeoX has no KV heads
            rope = {**_ROPE, "partial_rotary_factor": 0.5} if arch == "gpt_neox" else _ROPE
            config = config_class(**sizes, rope_parameters=rope)
            folder = tmp_path_factory.mktemp(f"hf-{arch}")
            # llama in shards: the import reads model.safetensors.index.json
            made[arch] = save_reference(model_class, config, _SEEDS[arch], folder,
                                        **({"max_shard_size": "20KB"} if arch == "llama" else {}))
            if arch == "llama":
                _word_tokenizer(folder / "tokenizer.json")
        return made[arch]

    return get


def _ids(batch: int, seq: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _greedy_kv(model, prompt: list[int], steps: int) -> list[int]:
    """Eager greedy decoding through forgeline's own prefill and decode_step (the KV-cache path)."""
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)
    logits, present = model.prefill(ids, mask)
    cache = [present[i, j] for i in range(present.shape[0]) for j in range(2)]  # (1, nkv, T, hs) each
    new = []
    for _ in range(steps):
        token = logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
        new.append(int(token))
        logits, kv = model.decode_step(token, mask, *cache)
        cache = [torch.cat([c, kv[i // 2, i % 2]], dim=2) for i, c in enumerate(cache)]
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
    return new


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gpt_neox"])
@torch.no_grad()
def test_eager_logits_and_kv_greedy_tokens_match_transformers(hf_decoder, arch):
    reference, folder = hf_decoder(arch)
    ours = load_hf_checkpoint(folder)
    c = ours.config
    assert (c.family, c.positions, c.rope_theta) == ("gpt", "rotary", 5000.0)
    if arch == "gpt_neox":
        assert (c.norm, c.parallel_residual, c.rotary_pct, c.n_kv_heads, c.gated_ffn) == ("layernorm", True, 0.5, 4, False)
    else:
        assert (c.norm, c.n_kv_heads, c.gated_ffn) == ("rmsnorm", 2, True)
        assert c.tie_embeddings == (arch == "qwen2") and c.qkv_bias == (arch == "qwen2")
    for batch, seq, seed in ((1, 7, 1), (3, 29, 2)):
        ids = _ids(batch, seq, seed)
        expected = reference(input_ids=ids).logits
        torch.testing.assert_close(ours(ids)[0], expected, atol=ATOL, rtol=RTOL)
    assert expected.abs().max() > 1.0  # the comparison is not of near-zero numbers
    prompt = [5, 17, 42, 8, 99]
    tokens = _greedy_kv(ours, prompt, STEPS)
    assert tokens == hf_greedy(reference, prompt, STEPS)
    assert len(set(tokens)) > 2  # not a degenerate repeat of one token


@pytest.fixture(scope="session")
def llama_artifact(hf_decoder, tmp_path_factory):
    """`forgeline build --from-hf FOLDER -o OUT`, no model name: the sharded, untied llama."""
    reference, folder = hf_decoder("llama")
    return reference, build_from_hf(folder, tmp_path_factory.mktemp("llama-artifact") / "out")


@pytest.mark.parametrize("backend", ["ort", "tvm"])
def test_built_llama_logits_and_generation_match_transformers(llama_artifact, backend):
    from forgeline.runtime import load

    reference, out = llama_artifact
    with load(out, backend=backend) as model:
        assert model.manifest.name == "llama" and model.manifest.preset == "hf"
        assert model.manifest.graphs["decode"].inputs[2].dims == ("batch", 2, "past", 8)  # KV heads only
        for batch, seq, seed in ((1, 9, 3), (2, 33, 4)):
            ids = _ids(batch, seq, seed)
            with torch.no_grad():
                expected = reference(input_ids=ids).logits.numpy()
            np.testing.assert_allclose(model.run(input_ids=ids.numpy())["logits"], expected, atol=ATOL, rtol=RTOL)
        prompt = [5, 17, 42, 8, 99]
        hf_new = hf_greedy(reference, prompt, STEPS)
        assert model.generate(prompt, max_new_tokens=STEPS).ids == [hf_new]  # the KV-cache graphs
        text = model.generate(" ".join(f"t{i}" for i in prompt), max_new_tokens=STEPS).text[0]
        assert text.split() == [f"t{i}" for i in hf_new]  # its own tokenizer.json shipped and used


def test_api_build_takes_no_name_for_a_hf_folder(llama_artifact):
    """forgeline.build(None, ..., from_hf=...) is what the CLI ran; the manifest names the architecture."""
    _, out = llama_artifact
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["family"] == "gpt" and manifest["config"]["gated_ffn"] and not manifest["config"]["tie_embeddings"]
