"""Optional ed25519 signatures over an artifact's manifest.

The manifest holds every file's sha256, so a signature over its exact bytes covers the whole
artifact. ``manifest.sig`` is a small JSON: the algorithm, the signer's public key and the
signature (both base64). On load:

- unsigned artifacts load (unless a ``verify_key`` is given, then they are refused);
- a signed artifact whose signature does not verify never loads;
- with ``verify_key``, the signature must also be by that key.

Without a ``verify_key`` a valid signature proves only that the manifest is unchanged since it was
signed by *some* key, the one written next to it; trust comes from checking against your key.
Uses the ``cryptography`` package, imported on demand.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path

from .artifact_io import SIGNATURE_FILE, artifact_lock, atomic_write_bytes
from .errors import ArtifactError, InputError, MissingDependencyError

log = logging.getLogger(__name__)

SIGNATURE_FORMAT = "forgeline-signature"
KeyArg = str | os.PathLike[str] | bytes | None


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise MissingDependencyError("signatures need the cryptography package; install it with "
                                     "`pip install cryptography`.") from exc
    return ed25519, serialization, InvalidSignature


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """Write a new ed25519 private key (PEM, PKCS8, mode 0600) and its public key (PEM)."""
    ed25519, ser, _ = _crypto()
    for path in (private_path, public_path):
        if Path(path).exists():
            raise InputError(f"{path} already exists; choose another file name (keys are never overwritten).")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    Path(public_path).write_bytes(key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))


def _read_key(source: KeyArg, private: bool):
    ed25519, ser, _ = _crypto()
    data = source if isinstance(source, bytes) else _read_key_file(source)
    try:
        key = (ser.load_pem_private_key(data, password=None) if private else ser.load_pem_public_key(data))
    except (ValueError, TypeError) as exc:
        kind = "private" if private else "public"
        raise InputError(f"the {kind} key {source if not isinstance(source, bytes) else '(bytes)'} is not an "
                         f"unencrypted PEM {kind} key ({exc}); make one with `forgeline keygen`.") from exc
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise InputError(f"the key {source} is not an ed25519 key; make one with `forgeline keygen`.")
    return key


def _read_key_file(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the key file {path} ({exc.strerror}).") from exc


def _raw_public(key) -> bytes:
    _, ser, _ = _crypto()
    return key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)


def sign_artifact(root: str | os.PathLike[str], private_key: KeyArg) -> Path:
    """Check the artifact, then sign its manifest bytes; returns the path of ``manifest.sig``."""
    from .format import Manifest, read_manifest_bytes
    from .confine import check_confinement

    root = Path(root)
    key = _read_key(private_key, private=True)
    with artifact_lock(root):
        data = read_manifest_bytes(root)
        manifest = Manifest.from_bytes(data, root)
        check_confinement(root, manifest)
        manifest.verify_files(root)  # sign only what is whole
        record = {"format": SIGNATURE_FORMAT, "algorithm": "ed25519",
                  "public_key": base64.b64encode(_raw_public(key.public_key())).decode(),
                  "signature": base64.b64encode(key.sign(data)).decode()}
        atomic_write_bytes(root / SIGNATURE_FILE, json.dumps(record, indent=2).encode())
    return root / SIGNATURE_FILE


def verify_manifest_signature(root: Path, manifest_bytes: bytes, verify_key: KeyArg = None) -> bool:
    """Check ``manifest.sig`` against the manifest bytes; True when signed and valid, False when unsigned."""
    sig_path = Path(root) / SIGNATURE_FILE
    if not sig_path.exists():
        if verify_key is not None:
            raise ArtifactError(f"{root} is not signed (no {SIGNATURE_FILE}) but a verify key was given, so it is "
                                "refused; sign it with `forgeline sign DIR --key KEY`.")
        return False
    ed25519, _, InvalidSignature = _crypto()
    public, signature = _read_signature(sig_path)
    if verify_key is not None:
        expected = _raw_public(_read_key(verify_key, private=False))
        if public != expected:
            raise ArtifactError(f"{root} is signed by another key than the verify key given; it is refused.")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, manifest_bytes)
    except (InvalidSignature, ValueError) as exc:
        raise ArtifactError(f"the signature of {root} does not match its manifest: the manifest changed after it "
                            "was signed, so the artifact is refused. Sign it again if the change is yours.") from exc
    log.info("%s: signature verified%s", root, "" if verify_key is not None else " (no verify key given)")
    return True


def _read_signature(path: Path) -> tuple[bytes, bytes]:
    try:
        record = json.loads(path.read_bytes()[: 1 << 16])
        if record.get("format") != SIGNATURE_FORMAT or record.get("algorithm") != "ed25519":
            raise ValueError("not a forgeline ed25519 signature")
        return base64.b64decode(record["public_key"], validate=True), base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ArtifactError(f"{path} is not a readable forgeline signature ({exc}); the artifact is refused.") from exc


__all__ = ["generate_keypair", "sign_artifact", "verify_manifest_signature"]
