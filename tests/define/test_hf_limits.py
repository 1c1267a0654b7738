"""A Hugging Face config.json is type-checked, bounded and sized before anything is allocated from it."""

from __future__ import annotations

import json
import resource
import struct
import subprocess
import sys

import pytest

from forgeline.define.hf_limits import check_hf_config, parameter_count
from forgeline.runtime.errors import ConfigError

GiB = 1 << 30
GPT2_SMALL = {"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12, "n_head": 12,
              "n_positions": 1024}


def _folder(tmp_path, **config):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**GPT2_SMALL, **config}))
    header = b"{}      "  # an empty safetensors file: the weights are never the problem here
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return folder


def test_a_huge_vocab_is_refused_before_allocating(tmp_path):
    folder = _folder(tmp_path, vocab_size=10**9, n_layer=2)  # 3 TB of embeddings, once allocated
    out = tmp_path / "out"

    def bounded():  # torch's import maps a few GiB of address space; a 3 TB request fails past this
        resource.setrlimit(resource.RLIMIT_AS, (8 * GiB, 8 * GiB))
    result = subprocess.run([sys.executable, "-m", "forgeline.cli", "-q", "build", "gpt", "--from-hf", str(folder),
                             "-o", str(out)], capture_output=True, text=True, timeout=300, preexec_fn=bounded)
    assert result.returncode == 1, result.stderr
    assert result.stderr == (f"error: {folder}/config.json: vocab_size=1000000000 is outside 1..4194304; forgeline "
                             "refuses it before allocating anything. Check the config.\n")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


@pytest.mark.parametrize("change,phrase", [
    ({"vocab_size": "50257"}, "vocab_size is '50257' (str), not an integer"),
    ({"n_layer": 10**6}, "n_layer=1000000 is outside 1..1024"),
    ({"n_embd": 768.0}, "n_embd is 768.0 (float), not an integer"),
    ({"n_head": True}, "n_head is True (bool), not an integer"),
    ({"n_positions": 0}, "n_positions=0 is outside 1..2097152"),
])
def test_mistyped_or_absurd_sizes_are_sentences(tmp_path, change, phrase):
    from forgeline.define.hf_import import read_hf_config

    with pytest.raises(ConfigError, match=phrase.replace("(", "\\(").replace(")", "\\)")):
        read_hf_config(_folder(tmp_path, **change))


def test_parameter_count_is_refused_past_memory():
    # GPT-2 small has 124,439,808 parameters (transformers' GPT2Model); the count ignores only biases' share
    assert abs(parameter_count(GPT2_SMALL) - 124_439_808) / 124_439_808 < 0.01
    assert check_hf_config(GPT2_SMALL, memory_bytes=24 * GiB) == parameter_count(GPT2_SMALL)
    llama_405b = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 16384, "num_hidden_layers": 126,
                  "intermediate_size": 53248, "num_attention_heads": 128, "num_key_value_heads": 8, "hidden_act": "silu",
                  "tie_word_embeddings": False}
    assert abs(parameter_count(llama_405b) - 405e9) / 405e9 < 0.01  # published: 405 billion
    with pytest.raises(ConfigError, match=r"describes a model of 4\d\d\.\d\d billion parameters, whose fp32 import "
                                          r"needs about \d+ GiB, but this machine has 24 GiB of memory"):
        check_hf_config(llama_405b, memory_bytes=24 * GiB)
