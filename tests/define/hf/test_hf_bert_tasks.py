"""fill-mask and next-sentence through the runtime API and the CLI, against eager PyTorch softmaxes.

The tiny BERT artifact carries the byte tokenizer (bytes 0..255, specials at 256..263), so the
test builds the expected input ids by hand from byte values, independent of the task code.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from forgeline.cli.app import main
from forgeline.define import load_checkpoint
from forgeline.runtime import load
from forgeline.runtime.errors import ConfigError, InputError
from forgeline.runtime.tokenizer import BYTE_SPECIALS

CLS, SEP, MASK = BYTE_SPECIALS["cls"], BYTE_SPECIALS["sep"], BYTE_SPECIALS["mask"]
TOL = 1e-5  # probabilities: softmax of logits that agree within the default 1e-4 tolerance


def _eager(path, ids, types):
    model = load_checkpoint(path / "weights.safetensors")
    with torch.no_grad():
        _, mlm, nsp = model(torch.tensor([ids]), torch.tensor([types]), torch.ones(1, len(ids), dtype=torch.long))
    return torch.softmax(mlm[0].double(), -1).numpy(), torch.softmax(nsp[0].double(), -1).numpy()


@pytest.fixture(scope="module")
def bert_path(tiny_artifact):
    return tiny_artifact("bert")


@pytest.mark.parametrize("backend", ["tvm", "ort"])
def test_fill_mask_matches_eager_softmax(bert_path, backend):
    ids = [CLS, *b"ab", MASK, *b"d e", MASK, *b".", SEP]
    probs, _ = _eager(bert_path, ids, [0] * len(ids))
    predictions = load(bert_path, backend=backend).fill_mask("ab[MASK]d e[MASK].", top_k=4)
    assert [p.position for p in predictions] == [3, 7]
    for prediction in predictions:
        expected = probs[prediction.position]
        got = [c.probability for c in prediction.candidates]
        assert len(got) == 4 and got == sorted(got, reverse=True)
        np.testing.assert_allclose(got, expected[[c.token_id for c in prediction.candidates]], atol=TOL)
        assert min(got) >= np.sort(expected)[-4] - TOL  # they are the top 4, up to ties within tolerance
        byte = prediction.candidates[0].token_id
        assert prediction.candidates[0].token == (bytes([byte]).decode("utf-8", "replace") if byte < 256 else "")


def test_fill_mask_with_ids_and_explicit_mask_id(bert_path):
    ids = [CLS, 5, 9, 200, SEP]
    probs, _ = _eager(bert_path, ids, [0] * len(ids))
    (prediction,) = load(bert_path).fill_mask(ids, top_k=2, mask_id=200)
    assert prediction.position == 3
    np.testing.assert_allclose([c.probability for c in prediction.candidates], np.sort(probs[3])[::-1][:2], atol=TOL)


def test_next_sentence_matches_eager_softmax(bert_path):
    a, b = "the cat sat.", "it purred."
    ids = [CLS, *a.encode(), SEP, *b.encode(), SEP]
    types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    _, nsp = _eager(bert_path, ids, types)
    assert abs(load(bert_path).next_sentence(a, b) - nsp[0]) < TOL
    _, swapped = _eager(bert_path, [CLS, *b.encode(), SEP, *a.encode(), SEP], [0] * (len(b) + 2) + [1] * (len(a) + 1))
    assert abs(load(bert_path, backend="ort").next_sentence(b, a) - swapped[0]) < TOL


def test_cli_fill_mask_and_next_sentence(bert_path, capsys):
    assert main(["-q", "fill-mask", str(bert_path), "--text", "x[MASK]y", "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^(.*?)\s+(\d+)\s+(0\.\d{4})$", out, flags=re.M)
    assert "[MASK] at position 2:" in out and len(rows) == 3
    probs, _ = _eager(bert_path, [CLS, *b"x", MASK, *b"y", SEP], [0] * 5)
    for _, token_id, probability in rows:
        assert abs(float(probability) - probs[2][int(token_id)]) < 5e-5 + TOL  # printed with 4 decimals
    assert main(["-q", "next-sentence", str(bert_path), "--a", "hi.", "--b", "yo.", "--backend", "ort"]) == 0
    printed = float(re.search(r"P\(b follows a\) = (0\.\d{4}|1\.0000)", capsys.readouterr().out).group(1))
    _, nsp = _eager(bert_path, [CLS, *b"hi.", SEP, *b"yo.", SEP], [0] * 5 + [1] * 4)
    assert abs(printed - nsp[0]) < 5e-5 + TOL


def test_bad_requests_are_sentences(bert_path, tiny_artifact, capsys):
    model = load(bert_path, backend="ort")
    with pytest.raises(InputError, match=r"no mask token"):
        model.fill_mask("no gap here")
    with pytest.raises(InputError, match=r"top_k=0"):
        model.fill_mask("a[MASK]", top_k=0)
    with pytest.raises(ConfigError, match=r"needs a BERT artifact"):
        load(tiny_artifact("gpt"), backend="ort").next_sentence("a", "b")
    assert main(["-q", "fill-mask", str(tiny_artifact("gpt")), "--text", "a[MASK]", "--backend", "ort"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: fill-mask needs a BERT artifact") and "Traceback" not in err


def test_bert_tasks_need_no_torch(bert_path, tmp_path):
    """fill-mask, next-sentence and embed in a fresh process leave no torch or onnx in sys.modules."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys
        import forgeline.runtime as rt
        m = rt.load({str(bert_path)!r})
        assert len(m.fill_mask("a[MASK]b", top_k=2)[0].candidates) == 2
        assert 0.0 <= m.next_sentence("a.", "b.") <= 1.0
        assert m.embed(["one", "three"]).shape == (2, 32)
        print("LEAKED", sorted(n for n in sys.modules if n.split(".")[0] in ("torch", "onnx", "transformers")))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "LEAKED []" in proc.stdout, proc.stdout
