"""`forgeline train`: pretrain a model on a text corpus (CLM, MLM + NSP, or seq2seq by family)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .registry import command
from forgeline.runtime.errors import ConfigError


def _train_args(p: argparse.ArgumentParser) -> None:
    # Defaults live in TrainOptions only (imported lazily: it pulls in torch); None = "use it".
    p.add_argument("model", help="model name, e.g. gpt, gpt-moe, bert, bert-moe, transformer (see `forgeline models`)")
    p.add_argument("--preset", default="tiny", help="size preset: tiny, small or base (default: tiny)")
    p.add_argument("--corpus", type=Path, help="UTF-8 text file, read as bytes (default: the shipped Shakespeare corpus)")
    p.add_argument("--steps", type=int, help="total optimizer steps (default: 200)")
    p.add_argument("-o", "--output", required=True, type=Path,
                   help="checkpoint to write (CKPT, plus CKPT.train.pt for resuming)")
    p.add_argument("--batch-size", type=int, help="sequences per step (default: 16)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence, at most the model's max_positions (default: 64)")
    p.add_argument("--lr", type=float, help="peak learning rate after warmup, cosine decay after (default: 1e-3)")
    p.add_argument("--warmup", type=int, dest="warmup_steps", help="linear warmup steps (default: 20)")
    p.add_argument("--eval-every", type=int, help="steps between held-out evaluations (default: 50)")
    p.add_argument("--save-every", type=int, help="steps between checkpoints (default: at the end only)")
    p.add_argument("--seed", type=int, help="init, data order and masking seed (default: 0)")
    p.add_argument("--no-nsp", dest="nsp", action="store_const", const=False,
                   help="BERT: train MLM only, without next-sentence prediction")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set d_model=64 (repeatable)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is faster for tiny models on a busy machine)")
    p.add_argument("--resume", action="store_true", help="continue the run saved at -o up to --steps")
    p.add_argument("--overwrite", action="store_true", help="start again even if -o exists")


_OPTION_ARGS = ("steps", "batch_size", "seq_len", "lr", "warmup_steps", "eval_every", "save_every", "seed", "nsp")


@command("train", "train a model on a text corpus and write a safetensors checkpoint", _train_args)
def _train(args: argparse.Namespace) -> int:
    from forgeline.train.trainer import TrainOptions, resume_options, train

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads} must be at least 1.")
        import torch

        torch.set_num_threads(args.threads)
    given = {k: getattr(args, k) for k in _OPTION_ARGS if getattr(args, k) is not None}
    # On --resume, options not given again are the first run's.
    options = resume_options(args.output, **given) if args.resume else TrainOptions(**given)
    result = train(args.model, args.output, options, preset=args.preset, corpus=args.corpus, resume=args.resume,
                   overwrite=args.overwrite, overrides=_overrides(args.set))
    val = result.history["val"]
    print(f"trained {args.model} to step {result.step}: val loss {val[0][1]:.4f} (step {val[0][0]}) -> "
          f"{val[-1][1]:.4f} (step {val[-1][0]}), {result.tokens_per_second:.0f} tokens/s")
    print(f"wrote {result.checkpoint} (and {result.checkpoint}.train.pt for --resume); "
          f"build it with `forgeline build {args.model} --weights {result.checkpoint} -o OUT`")
    return 0


def _overrides(pairs: list[str]) -> dict:
    """--set FIELD=VALUE pairs -> {field: value}, values typed like the config's defaults."""
    from forgeline.define import ModelConfig

    defaults = ModelConfig().to_dict()
    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in defaults:
            raise ConfigError(f"--set {pair!r} must be FIELD=VALUE with FIELD one of {sorted(defaults)}.")
        kind = type(defaults[name])
        try:
            out[name] = kind(text) if kind is not bool else text.lower() in ("1", "true", "yes")
        except ValueError as exc:
            raise ConfigError(f"--set {pair!r}: {text!r} is not a valid {kind.__name__}.") from exc
    return out
