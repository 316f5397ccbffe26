"""One signed, sequenced envelope for every report that leaves the site.

Wire format (canonical JSON: sorted keys, no spaces, no NaN)::

    {"body": {...}, "key_id": "<16 hex>", "kind": "drift"|"health", "seq": 17,
     "sig": "<base64 Ed25519>", "site_id": "s-01", "v": 1}

The signature covers ``"forewarn-report-v1\\n"`` + the canonical JSON of the
envelope without ``sig``; the receiver re-serialises what it parsed the same
way (Python floats round-trip exactly), so no second encoding of the body is
needed. The body is the report already validated by its allow-list schema.

``seq`` is per appliance, strictly increasing, persisted before a report is
queued (:class:`SequenceFile`): a crash may skip a number (the fleet sees a gap)
but never reuses one, so the fleet's (site_id, seq) key makes a redelivered
report idempotent and a replayed one detectable.

The appliance key (:func:`load_or_create_key`) is generated on first start in
the state directory (private key 0600); central IT enrols its public key.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edge.core.errors import EgressError, ReportRefused, StorageError
from edge.models.signing import generate_keypair, key_id, load_private_key

ENVELOPE_VERSION = 1
DOMAIN = b"forewarn-report-v1\n"
KINDS = ("drift", "health")
Kind = Literal["drift", "health"]
KEY_FILE = "egress/appliance.key"
PUB_FILE = "egress/appliance.pub"
SEQ_FILE = "egress/sequence"


def canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def load_or_create_key(state_dir: Path) -> Ed25519PrivateKey:
    """The appliance's own Ed25519 key; created (0600) on first use."""
    priv, pub = Path(state_dir) / KEY_FILE, Path(state_dir) / PUB_FILE
    if not priv.exists():
        generate_keypair(priv, pub)
    return load_private_key(priv)


def public_pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class SequenceFile:
    """A strictly increasing counter that survives restarts and power cuts.

    Each :meth:`next` writes the new value to a temporary file, fsyncs it and
    renames it over the old one before returning, so a number handed out is
    never handed out again.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            text = self.path.read_text().strip() if self.path.exists() else "0"
            self._last = int(text or "0")
        except (OSError, ValueError) as exc:
            raise StorageError(f"{self.path}: unreadable report sequence ({exc}); "
                               "restore it or set it above the last number sent") from exc

    @property
    def last(self) -> int:
        return self._last

    def next(self) -> int:
        with self._lock:
            n = self._last + 1
            tmp = self.path.with_suffix(".tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(f"{n}\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
                dfd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            except OSError as exc:
                raise StorageError(f"{self.path}: cannot persist report sequence ({exc})"
                                   ) from exc
            self._last = n
            return n


@dataclass(frozen=True)
class Envelope:
    kind: str
    site_id: str
    seq: int
    key_id: str
    body: dict[str, Any]


class Sealer:
    """Signs and numbers reports of one appliance."""

    def __init__(self, site_id: str, key: Ed25519PrivateKey, sequence: SequenceFile) -> None:
        self.site_id = site_id
        self.key = key
        self.key_id = key_id(key.public_key())
        self.sequence = sequence

    def seal(self, kind: Kind, body: bytes, seq: int | None = None) -> bytes:
        """Envelope ``body`` (canonical JSON of a validated report); a new seq unless given."""
        if kind not in KINDS:
            raise EgressError(f"unknown report kind {kind!r} (expected one of {KINDS})")
        doc: dict[str, Any] = {"v": ENVELOPE_VERSION, "kind": kind, "site_id": self.site_id,
                               "seq": self.sequence.next() if seq is None else seq,
                               "key_id": self.key_id, "body": json.loads(body)}
        doc["sig"] = base64.b64encode(self.key.sign(DOMAIN + canonical(doc))).decode()
        return canonical(doc)


def peek(payload: bytes) -> Envelope:
    """The envelope's fields without verifying the signature (for local bookkeeping)."""
    try:
        doc = json.loads(payload)
        return Envelope(str(doc["kind"]), str(doc["site_id"]), int(doc["seq"]),
                        str(doc["key_id"]), dict(doc["body"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise EgressError(f"not a report envelope ({exc})") from exc


def schema_name(payload: bytes) -> str:
    """Ledger schema label: ``forewarn.<kind>/1``; bare drift reports of old rows too."""
    try:
        return f"forewarn.{peek(payload).kind}/{ENVELOPE_VERSION}"
    except EgressError:
        return "forewarn.drift/1"


def open_envelope(payload: bytes, keys: dict[str, Ed25519PublicKey]) -> Envelope:
    """Parse and verify; ReportRefused(reason) for anything not signed by the site's key.

    ``keys`` maps site_id to its enrolled public key.
    """
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReportRefused("malformed", f"not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise ReportRefused("malformed", "envelope is not a JSON object")
    sig = doc.pop("sig", None)
    if sig is None:
        raise ReportRefused("unsigned", "envelope has no sig")
    expected = {"v", "kind", "site_id", "seq", "key_id", "body"}
    if set(doc) != expected:
        raise ReportRefused("malformed", f"envelope fields {sorted(doc)} != {sorted(expected)}")
    site, seq, kind = doc["site_id"], doc["seq"], doc["kind"]
    if doc["v"] != ENVELOPE_VERSION or kind not in KINDS or not isinstance(site, str) \
            or not isinstance(seq, int) or isinstance(seq, bool) or seq < 1 \
            or not isinstance(doc["body"], dict):
        raise ReportRefused("malformed", f"bad envelope header v={doc['v']!r} kind={kind!r} "
                                         f"site_id={site!r} seq={seq!r}")
    key = keys.get(site)
    if key is None:
        raise ReportRefused("unknown_site", f"site_id={site!r} is not enrolled")
    try:
        key.verify(base64.b64decode(str(sig), validate=True), DOMAIN + canonical(doc))
    except (InvalidSignature, ValueError) as exc:
        raise ReportRefused("bad_signature",
                            f"site_id={site!r} seq={seq}: signature does not verify") from exc
    return Envelope(kind, site, seq, str(doc["key_id"]), doc["body"])
