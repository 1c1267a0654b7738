"""`forgeline train` on the shipped corpus: held-out loss goes down, runs resume exactly."""

from __future__ import annotations

import pytest
import torch

from forgeline.cli.app import main
from forgeline.define import build_model, load_checkpoint
from forgeline.train.data import load_corpus
from forgeline.train.trainer import Trainer, TrainOptions, fit, state_path, training_config
from forgeline.runtime.errors import ConfigError


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train ~25x faster on one thread than on two when the machine is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


def heldout_clm_loss(model, ids: torch.Tensor, seq_len: int = 32, n: int = 24) -> float:
    """Mean next-byte negative log-likelihood on evenly spaced held-out windows, computed here."""
    starts = torch.linspace(0, len(ids) - seq_len - 1, n).long().tolist()
    x = torch.stack([ids[s: s + seq_len] for s in starts])  # (n, T)
    with torch.no_grad():
        logits = model.eval()(x)[0]  # (n, T, V)
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)  # (n, T-1, V)
    return float(-logp.gather(-1, x[:, 1:, None]).mean())


def test_cli_train_lowers_heldout_loss_and_resumes(tmp_path, capsys, corpus):
    ckpt = tmp_path / "gpt.safetensors"
    common = ["-q", "train", "gpt", "--batch-size", "8", "--seq-len", "32", "--eval-every", "20", "-o", str(ckpt)]
    assert main([*common, "--steps", "40"]) == 0
    assert "trained gpt to step 40" in capsys.readouterr().out
    trained = load_checkpoint(ckpt)
    assert trained.config.vocab_size == 264  # the byte-level override is recorded in the checkpoint
    held_out = corpus.val
    before = heldout_clm_loss(build_model(trained.config, seed=0), held_out)  # the same init, untrained
    after = heldout_clm_loss(trained, held_out)
    assert after < before - 0.3, f"held-out loss {before:.3f} -> {after:.3f}"
    val = dict(torch.load(state_path(ckpt), weights_only=True)["history"]["val"])
    assert sorted(val) == [0, 20, 40] and val[40] < val[0]

    assert main(["-q", "train", "gpt", "--steps", "50", "--resume", "-o", str(ckpt)]) == 0
    state = torch.load(state_path(ckpt), weights_only=True)
    assert state["step"] == 50 and [s for s, _ in state["history"]["train"]] == list(range(1, 51))
    assert sorted(dict(state["history"]["val"])) == [0, 20, 40, 50]  # no second step-0 evaluation
    resumed = load_checkpoint(ckpt)
    assert not torch.equal(resumed.wte.weight, trained.wte.weight)


def _options() -> TrainOptions:
    return TrainOptions(steps=16, batch_size=4, seq_len=16, warmup_steps=4, eval_every=8, eval_batches=1, log_every=100)


@pytest.mark.parametrize("name", ["gpt-moe-tc", "bert-moe"])
def test_resume_matches_an_uninterrupted_run(tmp_path, name, corpus):
    options = _options()
    config = training_config(name, "tiny")
    straight = Trainer(build_model(config, seed=0), corpus, options)
    fit(straight, tmp_path / "straight.safetensors")

    interrupted = Trainer(build_model(config, seed=0), corpus, options)
    for _ in range(7):
        interrupted.train_step()
    interrupted.save(tmp_path / "part.safetensors")
    resumed = Trainer.resume(tmp_path / "part.safetensors", corpus, options)
    assert resumed.step == 7
    fit(resumed, tmp_path / "part.safetensors")

    assert resumed.history["train"] == straight.history["train"]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert straight.history["train"][-1][1] < straight.history["train"][0][1]


def test_resume_refuses_changed_options(tmp_path, corpus):
    trainer = Trainer(build_model(training_config("gpt", "tiny"), seed=0), corpus, _options())
    trainer.train_step()
    trainer.save(tmp_path / "c.safetensors")
    changed = TrainOptions(**{**vars(_options()), "lr": 5e-4})
    with pytest.raises(ConfigError, match="lr was 0.001, now 0.0005"):
        Trainer.resume(tmp_path / "c.safetensors", corpus, changed)


def test_cli_train_errors_are_sentences(tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    assert main(["-q", "train", "gpt", "--resume", "-o", str(out)]) == 1
    assert "x.safetensors.train.pt does not exist" in capsys.readouterr().err
    assert main(["-q", "train", "gpt", "--seq-len", "65", "--steps", "1", "-o", str(out)]) == 1
    assert "max_positions=64" in capsys.readouterr().err
    assert main(["-q", "train", "gpt", "--corpus", str(tmp_path / "none.txt"), "-o", str(out)]) == 1
    assert "none.txt does not exist" in capsys.readouterr().err
