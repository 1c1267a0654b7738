"""Tokenizers that travel inside an artifact: a byte-level one (no download) and HF tokenizer.json.

The byte tokenizer maps bytes to ids 0..255 and puts 8 specials at 256..263, which is exactly the
vocab_size 264 of the tiny presets. The small/base presets have larger vocabularies; bytes still
fit there (ids above 263 are simply never produced by encode, and decode drops them like specials).

An artifact names its tokenizer file in ``manifest.tokenizer`` (a path relative to the root):
either a Hugging Face ``tokenizer.json`` or a small ``{"type": "bytes"}`` JSON. Runtime only:
numpy-free even; ``tokenizers`` is imported on demand for the HF case.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, Sequence

from .errors import ArtifactError, InputError, MissingDependencyError

SPECIAL_NAMES = ("pad", "bos", "eos", "cls", "sep", "mask", "unk")
BYTE_SPECIALS = {name: 256 + i for i, name in enumerate(SPECIAL_NAMES)}  # 263 stays reserved
BYTE_VOCAB_SIZE = 264
BYTES_JSON = {"type": "bytes"}
# The largest published tokenizer.json files are ~35 MB (Gemma's 256k vocabulary); a bigger one is
# refused before it is parsed.
MAX_TOKENIZER_BYTES = 64 << 20
# No token of a real vocabulary spans more characters than this, so a text longer than
# positions x MAX_CHARS_PER_TOKEN cannot fit the model and is refused before it is encoded.
MAX_CHARS_PER_TOKEN = 128

# Token strings that mark each special role in common HF vocabularies (BERT WordPiece, GPT-2 BPE).
_HF_SPECIAL_TOKENS = {
    "pad": ("[PAD]", "<pad>"),
    "bos": ("<s>", "[BOS]", "<|endoftext|>"),
    "eos": ("</s>", "[EOS]", "<|endoftext|>"),
    "cls": ("[CLS]", "<cls>"),
    "sep": ("[SEP]", "<sep>"),
    "mask": ("[MASK]", "<mask>"),
    "unk": ("[UNK]", "<unk>"),
}


class Tokenizer(Protocol):
    vocab_size: int
    special_ids: dict[str, int]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255; specials (pad, bos, eos, cls, sep, mask, unk, reserved) at 256..263."""

    vocab_size = BYTE_VOCAB_SIZE

    def __init__(self):
        self.special_ids = dict(BYTE_SPECIALS)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        # Specials (and any id a larger vocabulary has beyond the bytes) carry no text.
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` (WordPiece, BPE, ...) through the ``tokenizers`` library."""

    def __init__(self, path: str | Path):
        try:
            from tokenizers import Tokenizer as _HF
        except ImportError as exc:
            raise MissingDependencyError(
                "reading a tokenizer.json needs the `tokenizers` package; pip install tokenizers."
            ) from exc
        self.path = Path(path)
        try:
            self._tok = _HF.from_file(str(self.path))
        except Exception as exc:  # the library raises a bare Exception on malformed files
            raise ArtifactError(f"{self.path} is not a readable tokenizer.json ({exc}); replace or rebuild it.") from exc
        # A tokenizer.json may enable padding/truncation (all-MiniLM-L6-v2's pads every text to 128
        # ids); encode must return the text's ids only. Batching and length limits are the caller's.
        self._tok.no_padding()
        self._tok.no_truncation()
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.special_ids = _find_specials(self._tok.get_vocab(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        # No automatic [CLS]/[SEP]: callers that want them (fill-mask) add them from special_ids.
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.path.name}, vocab_size={self.vocab_size})"


def _find_specials(vocab: dict[str, int]) -> dict[str, int]:
    found = {}
    for role, tokens in _HF_SPECIAL_TOKENS.items():
        for token in tokens:
            if token in vocab:
                found[role] = vocab[token]
                break
    return found


def is_bytes_spec(data: Any) -> bool:
    return isinstance(data, dict) and data.get("type") == "bytes"


def read_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer stored in a JSON file: the byte spec, or anything else as HF tokenizer.json."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"tokenizer file {path} does not exist; rebuild the artifact or pass a tokenizer.json.")
    size = path.stat().st_size
    if size > MAX_TOKENIZER_BYTES:
        raise ArtifactError(f"{path} is {size / 2**20:.0f} MiB, more than any tokenizer.json holds (at most "
                            f"{MAX_TOKENIZER_BYTES >> 20} MiB); it is refused unread.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); the tokenizer file is corrupt, rebuild it.") from exc
    except RecursionError as exc:
        raise ArtifactError(f"{path} nests its JSON too deeply to be a tokenizer; the file is corrupt or "
                            "hostile, rebuild the artifact.") from exc
    return ByteTokenizer() if is_bytes_spec(data) else HFTokenizer(path)


def load_tokenizer(root: Path, manifest) -> Tokenizer:
    """The artifact's tokenizer; a sentence when the artifact carries none."""
    relpath = getattr(manifest, "tokenizer", None)
    if not relpath:
        raise ArtifactError(
            f"the artifact at {root} carries no tokenizer; pass token ids instead of text, or re-export it "
            "(export writes the byte tokenizer by default, or ships the tokenizer.json you give it)."
        )
    from .paths import confined

    return read_tokenizer(confined(Path(root), relpath, "the tokenizer"))


def encode_checked(tokenizer: Tokenizer, text: str, vocab_size: int, max_tokens: int | None = None) -> list[int]:
    """encode, then refuse ids the model cannot embed (a tokenizer bigger than the model's vocab).

    ``max_tokens`` (the model's positions): a text too long to fit them is refused before encoding.
    """
    if max_tokens is not None and len(text) > max_tokens * MAX_CHARS_PER_TOKEN:
        raise InputError(f"the text has {len(text):,} characters, more than the model's {max_tokens} positions can "
                         f"hold (at most {max_tokens * MAX_CHARS_PER_TOKEN:,} characters); shorten it.")
    ids = tokenizer.encode(text)
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise InputError(
            f"the tokenizer produced id {bad[0]} but the model's vocabulary has {vocab_size} ids; "
            "the artifact's tokenizer does not match its model."
        )
    return ids
