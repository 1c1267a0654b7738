"""Checkpoint folders forgeline must refuse: one sentence on stderr, exit 1, nothing written, and
nothing unpickled or allocated on the way."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from forgeline.cli.app import main
from forgeline.define.hf_import import load_hf_checkpoint
from forgeline.runtime.errors import ConfigError

from .test_hf_llama import hf_decoder  # noqa: F401  (the session fixture)


@pytest.fixture
def llama_copy(hf_decoder, tmp_path):  # noqa: F811
    """A private copy of the llama checkpoint, merged into one model.safetensors."""
    _, folder = hf_decoder("mistral")
    dst = tmp_path / "ckpt"
    shutil.copytree(folder, dst)
    return dst


def _refused(folder, tmp_path, capsys, *fragments: str) -> None:
    out = tmp_path / "out"
    assert main(["-q", "build", "--from-hf", str(folder), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == [folder.name]  # nothing written


def _edit_config(folder, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_pickle_only_folder(llama_copy, tmp_path, capsys, monkeypatch):
    state = load_file(str(llama_copy / "model.safetensors"))
    (llama_copy / "model.safetensors").unlink()
    torch.save(state, llama_copy / "pytorch_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was opened"))
    _refused(llama_copy, tmp_path, capsys, "pytorch_model.bin", "convert it to model.safetensors")


@pytest.mark.parametrize("changes, fragments", [
    ({"model_type": "falcon"}, ("model_type 'falcon'; forgeline imports bert, ", "llama", "mixtral", "distilbert")),
    ({"auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}, ("never runs",)),
    ({"vocab_size": "120"}, ("vocab_size is '120' (str), not an integer",)),
    ({"vocab_size": 10**9}, ("vocab_size=1000000000",)),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, ("plain rotary positions only",)),
])
def test_config_refusals(llama_copy, tmp_path, capsys, changes, fragments):
    _edit_config(llama_copy, **changes)
    _refused(llama_copy, tmp_path, capsys, *fragments)


def test_a_model_beyond_memory_is_refused_before_any_allocation(llama_copy, monkeypatch):
    _edit_config(llama_copy, hidden_size=32768, intermediate_size=131072, num_hidden_layers=512,
                 num_attention_heads=256, num_key_value_heads=256, head_dim=128)
    import forgeline.define.hf_import as hf_import

    monkeypatch.setattr(hf_import, "build_model", lambda *a, **k: pytest.fail("the model was built"))
    monkeypatch.setattr(hf_import, "read_hf_state", lambda *a, **k: pytest.fail("the weights were read"))
    with pytest.raises(ConfigError, match=r"billion parameters, whose fp32 import needs about .* GiB, but this machine has .* GiB"):
        load_hf_checkpoint(llama_copy)


def test_missing_tensor_and_wrong_shape(llama_copy, tmp_path, capsys):
    path = llama_copy / "model.safetensors"
    state = load_file(str(path))
    original = dict(state)
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(path))
    _refused(llama_copy, tmp_path, capsys, "missing keys ['layers.1.mlp.up_proj.weight']")
    state = dict(original)
    state["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(32, 32)  # a full-width k: not 2 KV heads
    save_file(state, str(path))
    _refused(llama_copy, tmp_path, capsys, "h.0.attn.key.weight (32, 32) (model expects (16, 32))")


def test_a_saved_head_that_differs_from_its_tied_embedding(hf_decoder, tmp_path):  # noqa: F811
    """Qwen2 here ties its head; a file whose saved head differs cannot be imported exactly."""
    _, folder = hf_decoder("qwen2")
    dst = tmp_path / "ckpt"
    shutil.copytree(folder, dst)
    path = dst / "model.safetensors"
    state = load_file(str(path))
    embedding = state["model.embed_tokens.weight"]
    assert load_hf_checkpoint(dst).lm_head.weight.equal(embedding.float())  # a matching copy imports
    state["lm_head.weight"] = embedding + 1
    save_file(state, str(path))
    with pytest.raises(ConfigError, match="has an untied lm_head.weight that differs from wte.weight"):
        load_hf_checkpoint(dst)
