"""`forgeline keygen` and `forgeline sign`: optional ed25519 signatures over an artifact's manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from .registry import command


def _keygen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", type=Path, help="writes NAME (private key, mode 0600) and NAME.pub (public key)")


def _sign_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="artifact folder")
    p.add_argument("--key", required=True, type=Path, help="ed25519 private key (PEM), e.g. from `forgeline keygen`")


@command("keygen", "make an ed25519 key pair for signing artifacts", _keygen_args)
def _keygen(args: argparse.Namespace) -> int:
    from forgeline.runtime.signing import generate_keypair

    public = args.name.with_name(args.name.name + ".pub")
    generate_keypair(args.name, public)
    print(f"wrote private key {args.name} (keep it secret) and public key {public} (give it to those who load)")
    return 0


@command("sign", "sign an artifact's manifest (which holds every file's sha256) with an ed25519 key", _sign_args)
def _sign(args: argparse.Namespace) -> int:
    from forgeline.runtime.signing import sign_artifact

    sig = sign_artifact(args.path, args.key)
    print(f"signed {args.path}: wrote {sig}; load it with verify_key= / --verify-key and the public key")
    return 0
