"""`forgeline fill-mask` and `forgeline next-sentence`: BERT tasks on an artifact."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import backend_args
from .output import print_table
from .registry import command


def _fill_mask_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="BERT artifact folder")
    p.add_argument("--text", required=True,
                   help='text with [MASK] where a word is missing, e.g. "paris is the [MASK] of france."')
    p.add_argument("--top-k", type=int, default=5, help="candidates per [MASK] (default: 5)")
    backend_args(p)


def _next_sentence_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="BERT artifact folder")
    p.add_argument("--a", required=True, help="the first sentence")
    p.add_argument("--b", required=True, help="the sentence that may follow it")
    backend_args(p)


@command("fill-mask", "BERT: the most probable tokens for each [MASK] in a text", _fill_mask_args)
def _fill_mask(args: argparse.Namespace) -> int:
    from forgeline.runtime import load

    model = load(args.path, backend=args.backend, target=args.target, verify_key=args.verify_key)
    for prediction in model.fill_mask(args.text, top_k=args.top_k):
        print(f"[MASK] at position {prediction.position}:")
        rows = [(c.token if c.token is not None else "", c.token_id, f"{c.probability:.4f}")
                for c in prediction.candidates]
        print_table(("token", "id", "probability"), rows)
    return 0


@command("next-sentence", "BERT: the probability that sentence b follows sentence a", _next_sentence_args)
def _next_sentence(args: argparse.Namespace) -> int:
    from forgeline.runtime import load

    model = load(args.path, backend=args.backend, target=args.target, verify_key=args.verify_key)
    print(f"P(b follows a) = {model.next_sentence(args.a, args.b):.4f}")
    return 0
