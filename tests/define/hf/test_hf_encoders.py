"""RoBERTa and DistilBERT checkpoints as switches of the BERT family: eager MLM logits are
transformers' own, and the built artifacts (ONNX Runtime and TVM) give them too, at two shapes.

RoBERTa numbers positions from pad_token_id + 1 counting non-pad tokens, so its inputs pad with
the pad id; DistilBERT takes no token_type_ids and has neither pooler nor NSP head.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from forgeline.define.hf_import import load_hf_checkpoint

from .hf_fixtures import ATOL, RTOL, save_reference

VOCAB = 97
_CONFIGS = {
    "roberta": (transformers.RobertaForMaskedLM,
                dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=42, type_vocab_size=1, pad_token_id=1), transformers.RobertaConfig),
    "distilbert": (transformers.DistilBertForMaskedLM,
                   dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=40),
                   transformers.DistilBertConfig),
}


@pytest.fixture(scope="session")
def hf_encoder(tmp_path_factory):
    made = {}

    def get(arch: str):
        if arch not in made:
            model_class, sizes, config_class = _CONFIGS[arch]
            made[arch] = save_reference(model_class, config_class(**sizes), 21 + len(made),
                                        tmp_path_factory.mktemp(f"hf-{arch}"))
        return made[arch]

    return get


def _inputs(batch: int, seq: int, seed: int, pad_id: int):
    """Ids right-padded with pad_id and their attention mask; row 0 unpadded."""
    ids = torch.randint(2, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    for b in range(1, batch):
        mask[b, seq // 2 + b:] = 0
    return ids.masked_fill(mask == 0, pad_id), mask


def _expected(reference, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return reference(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("arch", ["roberta", "distilbert"])
@torch.no_grad()
def test_eager_mlm_logits_match_transformers(hf_encoder, arch):
    reference, folder = hf_encoder(arch)
    ours = load_hf_checkpoint(folder)
    assert ours.config.name == arch and not ours.config.next_sentence
    assert [s.name for s in ours.input_specs()] == (
        ["input_ids", "token_type_ids", "attention_mask"] if arch == "roberta" else ["input_ids", "attention_mask"])
    for batch, seq, seed in ((1, 6, 1), (3, 23, 2)):
        ids, mask = _inputs(batch, seq, seed, pad_id=1)
        args = (ids, torch.zeros_like(ids), mask) if arch == "roberta" else (ids, mask)
        hidden, mlm = ours(*args)
        expected = _expected(reference, ids, mask)
        real = mask.bool()  # padded rows attend as HF's do, but only real tokens are compared
        torch.testing.assert_close(mlm[real], expected[real], atol=ATOL, rtol=RTOL)
    assert expected.abs().max() > 1.0


@pytest.fixture(scope="session")
def encoder_artifacts(hf_encoder, tmp_path_factory):
    """Both encoders from their folders alone: DistilBERT through forgeline.build (which also
    reruns every check), RoBERTa through export and compile (each checks its stage against eager)."""
    import forgeline
    from forgeline.compile import compile_artifact
    from forgeline.export import ExportOptions, export_model

    built = {}
    for arch in _CONFIGS:
        reference, folder = hf_encoder(arch)
        out = tmp_path_factory.mktemp(f"{arch}-artifact") / "out"
        if arch == "distilbert":
            assert forgeline.build(None, out, ExportOptions(from_hf=folder)).passed
        else:
            export_model(None, out, ExportOptions(from_hf=folder))
            compile_artifact(out)
        built[arch] = (reference, out)
    return built


@pytest.mark.parametrize("arch", ["roberta", "distilbert"])
@pytest.mark.parametrize("backend", ["ort", "tvm"])
def test_built_encoders_match_transformers(encoder_artifacts, arch, backend):
    from forgeline.runtime import load

    reference, out = encoder_artifacts[arch]
    with load(out, backend=backend) as model:
        assert [s.name for s in model.manifest.outputs] == ["hidden_states", "mlm_logits"]
        for batch, seq, seed in ((1, 7, 3), (2, 31, 4)):
            ids, mask = _inputs(batch, seq, seed, pad_id=1)
            feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
            if arch == "roberta":
                feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
            got = model.run(**feed)["mlm_logits"]
            real = mask.numpy().astype(bool)
            np.testing.assert_allclose(got[real], _expected(reference, ids, mask).numpy()[real], atol=ATOL, rtol=RTOL)
        if arch == "distilbert":  # fill-mask feeds only the inputs the artifact declares
            ids = [5, 6, 96, 7]
            top = model.fill_mask(ids, top_k=3, mask_id=96)[0].candidates
            expected = _expected(reference, torch.tensor([ids]), torch.ones(1, 4, dtype=torch.long))[0, 2]
            assert [c.token_id for c in top] == expected.topk(3).indices.tolist()
