"""Ed25519 keys, bundle signatures and the two key roles.

A signature covers a small canonical message built from the SHA-256 of
``manifest.json`` and of every payload file (``model.onnx`` of a full or template
bundle, ``params.npz`` of a site parameters bundle), so no file can change
unnoticed. Two message formats:

* format 1, ``forewarn-bundle-v1`` over the manifest and ``model.onnx``: what a
  central key writes for a bundle whose payload is the graph alone, so agents from
  before key roles still verify new full bundles;
* format 2, ``forewarn-bundle-v2``: the role and key id inside the signed message,
  then ``<file>=<sha256>`` for every file in name order. Every site signature and
  every bundle holding ``params.npz`` uses it.

Who may sign what is decided by the appliance's configuration, not by the
signature: a key listed in ``bundle.trusted_keys`` is **central** (may sign any
bundle), a key in ``bundle.site_keys`` is a **site** key (may sign only site
parameters of a centrally signed template, see :mod:`edge.models.sitekey`). The
role a signature records must be the role the appliance gives its key, or the
bundle is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edge.core.errors import ConfigError, SignatureError

SIGNATURE_FILE = "SIGNATURE"
MANIFEST_FILE = "manifest.json"
PAYLOAD_FILES = ("model.onnx", "params.npz")
_DOMAIN = b"forewarn-bundle-v1\n"
_DOMAIN_V2 = b"forewarn-bundle-v2\n"
Role = Literal["central", "site"]
SITE_KEY_RIGHTS = "it may sign only site parameters of a centrally signed template"
# Site parameters were once signed in a domain of their own ("forewarn-site-params-v1",
# role "site_params"), before any was deployed; that format is refused, by name.
_RETIRED = ("{sig_path}: site parameters signed in the retired forewarn-site-params-v1 "
            "format, which this version does not load; learn and sign them again with "
            "forewarn commission")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def signed_message(manifest_sha256: str, model_sha256: str) -> bytes:
    """Format 1: the manifest and the graph."""
    return _DOMAIN + f"manifest={manifest_sha256}\nmodel={model_sha256}\n".encode()


def signed_message_v2(role: Role, kid: str, digests: dict[str, str]) -> bytes:
    """Format 2: role and key id, then ``<file>=<sha256>`` for each signed file.

    >>> signed_message_v2("site", "ab12", {"params.npz": "22", "manifest.json": "11"})
    b'forewarn-bundle-v2\\nrole=site\\nkey=ab12\\nmanifest.json=11\\nparams.npz=22\\n'
    """
    lines = [f"role={role}", f"key={kid}", *(f"{n}={digests[n]}" for n in sorted(digests))]
    return _DOMAIN_V2 + "".join(f"{line}\n" for line in lines).encode()


def signed_files(bundle_dir: Path) -> dict[str, str]:
    """SHA-256 of the manifest and of every payload file present, by file name."""
    names = [MANIFEST_FILE, *(f for f in PAYLOAD_FILES if (bundle_dir / f).exists())]
    return {n: sha256_file(bundle_dir / n) for n in names}


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


@dataclass(frozen=True)
class KeyRing:
    """The public keys an appliance trusts, by role (key id -> key)."""

    central: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    site: dict[str, Ed25519PublicKey] = field(default_factory=dict)

    @classmethod
    def load(cls, trusted: list[Path], site: list[Path] | None = None) -> KeyRing:
        ring = cls(load_trusted_keys(trusted), load_trusted_keys(site or []))
        both = sorted(set(ring.central) & set(ring.site))
        if both:
            raise ConfigError(f"key {', '.join(both)} is listed both in bundle.trusted_keys "
                              "(central) and bundle.site_keys (site); a key has one role")
        return ring

    def role(self, kid: str) -> Role | None:
        return "central" if kid in self.central else "site" if kid in self.site else None

    def key(self, kid: str) -> Ed25519PublicKey | None:
        return self.central.get(kid) or self.site.get(kid)

    def describe(self) -> str:
        c = ", ".join(sorted(self.central)) or "none"
        return f"central: {c}; site: {', '.join(sorted(self.site)) or 'none'}"


@dataclass(frozen=True)
class Signer:
    key_id: str
    role: Role


def sign_bundle(bundle_dir: Path, private: Ed25519PrivateKey, *, role: Role = "central") -> None:
    """Write ``SIGNATURE`` over the manifest and every payload file (see the module doc)."""
    digests = signed_files(bundle_dir)
    if len(digests) == 1:
        raise SignatureError(f"{bundle_dir}: nothing to sign besides manifest.json "
                             f"(a bundle holds one of {', '.join(PAYLOAD_FILES)})")
    kid = key_id(private.public_key())
    if role == "central" and set(digests) == {MANIFEST_FILE, "model.onnx"}:
        fmt, msg = 1, signed_message(digests[MANIFEST_FILE], digests["model.onnx"])
    else:
        fmt, msg = 2, signed_message_v2(role, kid, digests)
    doc = {
        "alg": "ed25519",
        "format": fmt,
        "role": role,
        "key_id": kid,
        "files": digests,  # not trusted on reading: names the changed file in an error
        "signature": base64.b64encode(private.sign(msg)).decode(),
    }
    (bundle_dir / SIGNATURE_FILE).write_text(json.dumps(doc, indent=1) + "\n")


def verify_signature(bundle_dir: Path, keys: KeyRing) -> Signer:
    """The key and role that signed the bundle; SignatureError naming what is wrong.

    This checks the signature only; what the signer may sign is
    :func:`check_rights`' business, once the manifest says what the bundle is.
    """
    sig_path = bundle_dir / SIGNATURE_FILE
    if not sig_path.exists():
        raise SignatureError(f"{sig_path}: bundle is unsigned")
    try:
        doc = json.loads(sig_path.read_text())
        kid = str(doc["key_id"])
        sig = base64.b64decode(doc["signature"], validate=True)
        if doc.get("alg") != "ed25519":
            raise ValueError(f"alg={doc.get('alg')!r}")
        fmt, claimed = doc.get("format", 1), doc.get("role", "central")
        if claimed == "site_params":
            raise SignatureError(_RETIRED.format(sig_path=sig_path))
        if fmt not in (1, 2) or claimed not in ("central", "site"):
            raise ValueError(f"format={fmt!r}, role={claimed!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{sig_path}: malformed signature file ({exc})") from exc
    role, key = keys.role(kid), keys.key(kid)
    if role is None or key is None:
        raise SignatureError(
            f"{sig_path}: signed by key {kid}, which is not among the trusted keys "
            f"({keys.describe()})")
    if claimed != role:
        raise SignatureError(_role_mismatch(bundle_dir, kid, claimed, role))
    digests = signed_files(bundle_dir)
    if fmt == 1:
        if set(digests) != {MANIFEST_FILE, "model.onnx"}:
            raise SignatureError(f"{sig_path}: a format 1 signature covers manifest.json and "
                                 f"model.onnx only, the bundle holds {', '.join(digests)}")
        msg = signed_message(digests[MANIFEST_FILE], digests["model.onnx"])
    else:
        msg = signed_message_v2(claimed, kid, digests)
    try:
        key.verify(sig, msg)
    except InvalidSignature as exc:
        raise SignatureError(f"{bundle_dir}: signature does not match "
                             f"{_changed(doc, digests)} (tampered?); signed by key {kid}"
                             ) from exc
    if "files" in doc and doc["files"] != digests:  # every byte of SIGNATURE is checked
        raise SignatureError(f"{sig_path}: its recorded file digests are not the signed ones "
                             "(SIGNATURE edited?)")
    return Signer(kid, role)


def check_rights(where: str, kind: str, signer: Signer | None) -> None:
    """A site key signs site parameters only; central keys sign anything."""
    if signer is not None and signer.role == "site" and kind != "site_params":
        raise SignatureError(f"{where}: key {signer.key_id} is a site key: {SITE_KEY_RIGHTS} "
                             f"(this bundle is kind {kind!r})")


def verify_bundle(bundle_dir: Path, trusted: dict[str, Ed25519PublicKey]) -> str:
    """Return the signing key id among central keys, or raise SignatureError."""
    return verify_signature(bundle_dir, KeyRing(central=trusted)).key_id


def _role_mismatch(bundle_dir: Path, kid: str, claimed: str, role: Role) -> str:
    if role == "site":
        return (f"{bundle_dir}: key {kid} is a site key: {SITE_KEY_RIGHTS} (its signature "
                "claims the central role)")
    return (f"{bundle_dir}: key {kid} signed as a site key but is listed in "
            "bundle.trusted_keys (central keys); list its .pub in bundle.site_keys")


def _changed(doc: dict[str, object], digests: dict[str, str]) -> str:
    """Name the files whose digest differs from the one the signer recorded, if it did."""
    recorded = doc.get("files")
    if isinstance(recorded, dict):
        changed = [n for n in digests if recorded.get(n) != digests[n]]
        changed += [n for n in recorded if n not in digests]
        if changed:
            return ", ".join(sorted(changed))
    return "/".join(digests)
