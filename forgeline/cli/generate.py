"""`forgeline generate` (GPT) and `forgeline translate` (encoder-decoder) on an artifact."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import backend_args
from .registry import command
from forgeline.runtime.errors import InputError


def _source_args(p: argparse.ArgumentParser, flag: str, what: str) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument(flag, help=f"{what} as text (the artifact's tokenizer encodes it)")
    group.add_argument("--ids", help=f"{what} as comma-separated token ids, e.g. 72,105")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate at most (default: 32)")
    p.add_argument("--eos-id", type=int, help="stop a row at this id (default: none for generate, the tokenizer's eos for translate)")


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="GPT artifact folder")
    _source_args(p, "--prompt", "the prompt")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens only")
    p.add_argument("--top-p", type=float, help="sample among the most likely tokens whose probability sums to p")
    p.add_argument("--seed", type=int, help="seed of the sampler, for reproducible samples")
    backend_args(p)


def _translate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="encoder-decoder (transformer) artifact folder")
    _source_args(p, "--src", "the source sentence")
    backend_args(p)


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError as exc:
        raise InputError(f"--ids {text!r} is not a comma-separated list of integers, e.g. 72,105.") from exc


def _print_result(result) -> None:
    if result.text is not None:
        print(result.text[0])
    print("ids: " + " ".join(str(i) for i in result.ids[0]))


@command("generate", "GPT: continue a prompt with the KV cache (greedy or sampled)", _generate_args)
def _generate(args: argparse.Namespace) -> int:
    from forgeline.runtime import load

    model = load(args.path, backend=args.backend, target=args.target, verify_key=args.verify_key)
    prompt = args.prompt if args.prompt is not None else _parse_ids(args.ids)
    result = model.generate(prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, eos_id=args.eos_id)
    _print_result(result)
    return 0


@command("translate", "Transformer: translate a source sentence greedily with the decoder's KV cache", _translate_args)
def _translate(args: argparse.Namespace) -> int:
    from forgeline.runtime import load

    model = load(args.path, backend=args.backend, target=args.target, verify_key=args.verify_key)
    src = args.src if args.src is not None else _parse_ids(args.ids)
    _print_result(model.translate(src, args.max_new_tokens, eos_id=args.eos_id))
    return 0
