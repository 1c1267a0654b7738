"""A trained checkpoint goes through `forgeline build --weights`, compiles, and generates what
eager PyTorch generates from the same checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forgeline.cli.app import main
from forgeline.define import load_checkpoint
from forgeline.runtime import load
from forgeline.runtime.tokenizer import ByteTokenizer


def eager_greedy(model, prompt: list[int], n_new: int) -> list[int]:
    """Greedy decoding by full recompute in eager PyTorch, one sequence (a batch of one)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n_new):
            logits = model.eval()(torch.tensor([ids]))[0]  # (1, T, V)
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_trained_checkpoint_builds_compiles_and_generates(tmp_path, capsys):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is faster on a busy machine
    try:
        ckpt = tmp_path / "gpt-moe.safetensors"
        assert main(["-q", "train", "gpt-moe", "--steps", "30", "--batch-size", "8", "--seq-len", "32",
                     "--eval-every", "30", "-o", str(ckpt)]) == 0
    finally:
        torch.set_num_threads(before)
    out = tmp_path / "art"
    assert main(["-q", "build", "gpt-moe", "--weights", str(ckpt), "-o", str(out)]) == 0
    assert "all stages match eager PyTorch" in capsys.readouterr().out

    model = load(out, backend="tvm")
    assert model.build is not None
    prompt = ByteTokenizer().encode("ROMEO:\n")
    result = model.generate(prompt, max_new_tokens=12)
    assert result.ids[0] == eager_greedy(load_checkpoint(ckpt), prompt, 12)
    assert isinstance(result.text[0], str)

    assert main(["-q", "generate", str(out), "--prompt", "ROMEO:\n", "--max-new-tokens", "12"]) == 0
    printed = capsys.readouterr().out
    assert "ids: " + " ".join(map(str, result.ids[0])) in printed
    assert np.all(np.array(result.ids[0]) < 264)
