"""Put a tokenizer into a bundle: the byte tokenizer by default, or a user's HF tokenizer.json."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from forgeline.runtime.errors import ArtifactError
from forgeline.runtime.tokenizer import BYTES_JSON, read_tokenizer

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"


def write_tokenizer(out: Path, vocab_size: int, source: Path | None = None) -> str:
    """Write ``tokenizer.json`` into ``out`` and return its relative path for Manifest.tokenizer.

    ``source`` None writes the byte tokenizer spec; else the HF tokenizer.json is copied after
    checking that it loads and fits the model's vocabulary.
    """
    dest = Path(out) / TOKENIZER_FILE
    if source is None:
        dest.write_text(json.dumps(BYTES_JSON))
    else:
        source = Path(source)
        if not source.is_file():
            raise ArtifactError(f"tokenizer file {source} does not exist; pass the path of a tokenizer.json.")
        shutil.copyfile(source, dest)
    tokenizer = read_tokenizer(dest)  # fails here, at export, rather than at first use
    if tokenizer.vocab_size > vocab_size:
        raise ArtifactError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary has {vocab_size}; "
            "pass a tokenizer that matches the model."
        )
    log.info("tokenizer: %r", tokenizer)
    return TOKENIZER_FILE
