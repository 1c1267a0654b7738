"""Tokenizer files and prompts are bounded: a sentence, not a RecursionError or gigabytes of ids."""

from __future__ import annotations

import subprocess
import sys

import pytest

import forgeline.runtime as rt
from forgeline.runtime.errors import ArtifactError
from forgeline.runtime.format import Manifest

GiB = 1 << 30


def _replace_tokenizer(art, write) -> None:
    """Swap the artifact's tokenizer.json and record its new hash: a consistent, hashed edit."""
    path = art / "tokenizer.json"
    write(path)
    manifest = Manifest.load(art)
    manifest.record_file(art, "tokenizer.json")
    manifest.save(art)


def test_a_deeply_nested_tokenizer_is_a_sentence(artifact_copy):
    art = artifact_copy("gpt")
    _replace_tokenizer(art, lambda p: p.write_text('{"model": ' + "[" * 100_000 + "]" * 100_000 + "}"))
    with rt.load(art, backend="ort") as model:
        with pytest.raises(ArtifactError, match="tokenizer.json nests its JSON too deeply to be a tokenizer; the file "
                                                "is corrupt or hostile, rebuild the artifact."):
            model.tokenizer
        assert model.selfcheck().passed  # the model itself still runs


def test_an_oversized_tokenizer_is_refused_unread(artifact_copy):
    art = artifact_copy("gpt")

    def huge(path):
        with open(path, "wb") as fh:
            fh.truncate(100 << 20)  # 100 MB (sparse: nothing to write)
    _replace_tokenizer(art, huge)
    with rt.load(art, backend="ort") as model:
        with pytest.raises(ArtifactError, match=r"tokenizer.json is 100 MiB, more than any tokenizer.json holds \(at "
                                                r"most 64 MiB\); it is refused unread."):
            model.tokenizer


PROMPT = """
import resource, sys
import forgeline.runtime as rt
from forgeline.runtime.errors import InputError
from forgeline.runtime.tasks.prompts import prompt_ids
model = rt.load(sys.argv[1], backend="ort")
text = "x" * 300_000_000  # 300 MB; its ids as a list would take 2.4 GB more
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
try:
    prompt_ids(model, text)
except InputError as exc:
    print(exc)
"""


def test_a_huge_prompt_is_refused_before_encoding(tiny_artifact):
    import os

    # The limit is set once the model is loaded: what is measured is the prompt's handling alone.
    peak_allowed = 3 * GiB
    result = subprocess.run([sys.executable, "-c", PROMPT, str(tiny_artifact("gpt")), str(peak_allowed)],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == ("the text has 300,000,000 characters, more than the model's 64 positions can hold (at "
                             "most 8,192 characters); shorten it.\n")
