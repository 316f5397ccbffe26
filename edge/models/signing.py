"""Ed25519 keys and bundle signatures.

The signature covers a small canonical message built from the SHA-256 of the
manifest bytes and of the graph bytes, so neither file can change unnoticed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edge.core.errors import ConfigError, SignatureError

SIGNATURE_FILE = "SIGNATURE"
_DOMAIN = b"forewarn-bundle-v1\n"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def signed_message(manifest_sha256: str, model_sha256: str) -> bytes:
    return _DOMAIN + f"manifest={manifest_sha256}\nmodel={model_sha256}\n".encode()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(private_path: Path, public_path: Path, *, overwrite: bool = False) -> str:
    """Write a new key pair; the private key is created 0600 from the start."""
    for p in (private_path, public_path):
        if p.exists() and not overwrite:
            raise ConfigError(f"{p}: already exists (pass --force to overwrite)")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if private_path.exists():
        private_path.unlink()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key_id(key.public_key())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: private key not found") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path}: private key is readable by others (mode {stat.filemode(mode)}); "
            "run chmod 600 on it"
        )
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read Ed25519 public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 public key")
    return key


def load_trusted_keys(paths: list[Path]) -> dict[str, Ed25519PublicKey]:
    """Public keys by key id; a directory contributes every ``*.pem``/``*.pub`` in it."""
    keys: dict[str, Ed25519PublicKey] = {}
    for p in paths:
        files = sorted([*p.glob("*.pem"), *p.glob("*.pub")]) if p.is_dir() else [p]
        for f in files:
            k = load_public_key(f)
            keys[key_id(k)] = k
    return keys


def sign_bundle(bundle_dir: Path, private: Ed25519PrivateKey) -> None:
    msg = signed_message(
        sha256_file(bundle_dir / "manifest.json"), sha256_file(bundle_dir / "model.onnx")
    )
    doc = {
        "alg": "ed25519",
        "key_id": key_id(private.public_key()),
        "signature": base64.b64encode(private.sign(msg)).decode(),
    }
    (bundle_dir / SIGNATURE_FILE).write_text(json.dumps(doc, indent=1) + "\n")


def verify_bundle(bundle_dir: Path, trusted: dict[str, Ed25519PublicKey]) -> str:
    """Return the signing key id, or raise SignatureError naming what is wrong."""
    sig_path = bundle_dir / SIGNATURE_FILE
    if not sig_path.exists():
        raise SignatureError(f"{sig_path}: bundle is unsigned")
    try:
        doc = json.loads(sig_path.read_text())
        kid = str(doc["key_id"])
        sig = base64.b64decode(doc["signature"], validate=True)
        if doc.get("alg") != "ed25519":
            raise ValueError(f"alg={doc.get('alg')!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{sig_path}: malformed signature file ({exc})") from exc
    key = trusted.get(kid)
    if key is None:
        raise SignatureError(
            f"{sig_path}: signed by key {kid}, which is not among the trusted keys "
            f"({', '.join(sorted(trusted)) or 'none configured'})"
        )
    msg = signed_message(
        sha256_file(bundle_dir / "manifest.json"), sha256_file(bundle_dir / "model.onnx")
    )
    try:
        key.verify(sig, msg)
    except InvalidSignature as exc:
        raise SignatureError(
            f"{bundle_dir}: signature does not match manifest.json/model.onnx (tampered?)"
        ) from exc
    return kid
