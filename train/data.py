"""Corpus -> byte ids -> train/held-out splits -> batches for each objective.

The corpus is read with the runtime's ByteTokenizer (ids 0..255, specials at 256..263), so a
trained checkpoint and a built artifact agree on ids without a tokenizer file. A batch is a
function of (split, seed, step) only, so a resumed run sees exactly the batches an uninterrupted
run would have seen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from forgeline.runtime.errors import ConfigError, InputError
from forgeline.runtime.tokenizer import BYTE_SPECIALS, ByteTokenizer

from .objectives import MaskingOptions, mask_tokens, nsp_pairs, teacher_forcing_inputs

log = logging.getLogger(__name__)

CORPUS_FILE = "shakespeare.txt"
_REPO_CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus" / CORPUS_FILE


def default_corpus_path() -> Path:
    """The shipped public-domain corpus: from the repo checkout, else from the installed package data."""
    if _REPO_CORPUS.is_file():
        return _REPO_CORPUS
    from importlib.resources import files

    try:
        return Path(str(files("forgeline.corpus") / CORPUS_FILE))
    except ModuleNotFoundError as exc:
        raise InputError("the shipped corpus was not found; pass --corpus PATH to a UTF-8 text file.") from exc


@dataclass
class Corpus:
    train: torch.Tensor  # (N_train,) int64 byte ids
    val: torch.Tensor  # (N_val,) int64 byte ids: the last val_fraction of the file
    path: Path

    def split(self, name: str) -> torch.Tensor:
        return self.train if name == "train" else self.val


def load_corpus(path: str | Path | None = None, *, val_fraction: float = 0.05) -> Corpus:
    """Read a UTF-8 text file as byte ids and split it by position (no shuffling across the cut)."""
    path = Path(path) if path is not None else default_corpus_path()
    if not path.is_file():
        raise InputError(f"corpus {path} does not exist; pass a UTF-8 text file (or omit --corpus for the shipped one).")
    if not 0.0 < val_fraction < 0.5:
        raise ConfigError(f"val_fraction={val_fraction} must be in (0, 0.5).")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"corpus {path} is not UTF-8 text ({exc}).") from exc
    ids = torch.tensor(ByteTokenizer().encode(text), dtype=torch.long)  # (N,)
    cut = int(len(ids) * (1.0 - val_fraction))
    log.info("corpus %s: %d bytes, %d train / %d held-out", path, len(ids), cut, len(ids) - cut)
    return Corpus(train=ids[:cut], val=ids[cut:], path=path)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator for one batch: a function of (seed, step), so a resumed run repeats it."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def windows(ids: torch.Tensor, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """n windows of ``length`` consecutive ids at random offsets -> (n, length)."""
    if len(ids) < length + 1:
        raise InputError(f"the corpus split has {len(ids)} tokens, fewer than one window of {length + 1}; "
                         "use a longer corpus or a shorter --seq-len.")
    starts = torch.randint(len(ids) - length, (n,), generator=generator)  # (n,)
    return torch.stack([ids[s: s + length] for s in starts.tolist()])  # (n, length)


# ------------------------------------------------------------------------------- batches per objective


def clm_batch(ids: torch.Tensor, *, batch_size: int, seq_len: int, generator: torch.Generator) -> dict:
    return {"input_ids": windows(ids, batch_size, seq_len, generator)}  # (B, T)


def seq2seq_batch(ids: torch.Tensor, *, batch_size: int, seq_len: int, generator: torch.Generator) -> dict:
    """Source = a window of text, target = the text that follows it (both seq_len long)."""
    w = windows(ids, batch_size, 2 * seq_len, generator)  # (B, 2T)
    target = w[:, seq_len:]  # (B, T)
    return {"src_ids": w[:, :seq_len], "tgt_ids": teacher_forcing_inputs(target, BYTE_SPECIALS["bos"]),
            "target": target}


def mlm_batch(ids: torch.Tensor, *, batch_size: int, seq_len: int, generator: torch.Generator,
              nsp: bool, masking: MaskingOptions = MaskingOptions()) -> dict:
    """[CLS] text [SEP] (nsp=False) or [CLS] A [SEP] B [SEP] with 50% random B (nsp=True), then
    the 15% / 80-10-10 masking. Labels hold the original ids of the masked positions."""
    if nsp:
        half = (seq_len - 3) // 2
        segments = ids[: (len(ids) // half) * half].view(-1, half)  # (n_segments, half) consecutive
        starts = torch.randint(len(segments) - 1, (batch_size,), generator=generator).tolist()
        pairs = nsp_pairs(segments, starts, seq_len=seq_len, specials=BYTE_SPECIALS, generator=generator)
        input_ids, token_type, attention = pairs.input_ids, pairs.token_type_ids, pairs.attention_mask
    else:
        text = windows(ids, batch_size, seq_len - 2, generator)  # (B, T-2)
        cls = torch.full((batch_size, 1), BYTE_SPECIALS["cls"])
        sep = torch.full((batch_size, 1), BYTE_SPECIALS["sep"])
        input_ids = torch.cat([cls, text, sep], dim=1)  # (B, T)
        token_type, attention = torch.zeros_like(input_ids), torch.ones_like(input_ids)
    masked, labels = mask_tokens(input_ids, mask_id=BYTE_SPECIALS["mask"], vocab_size=ByteTokenizer.vocab_size,
                                 special_ids=[*BYTE_SPECIALS.values(), 263],  # 263: reserved
                                 generator=generator, options=masking)
    batch = {"input_ids": masked, "token_type_ids": token_type, "attention_mask": attention, "labels": labels}
    if nsp:
        batch["is_random"] = pairs.is_random
    return batch
