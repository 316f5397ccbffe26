"""Is an OPC UA server's certificate one the operator trusts?

The agent learns the server certificate from the server's own endpoint list, over
an unauthenticated channel, so it must not believe it: the certificate is used only
when it is one of ``trusted_server_certificates`` (pinned, compared by SHA-256) or
was issued by one of them (a plant CA). The secure channel is then bound to that
certificate: an impostor without its private key cannot open it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from edge.core.errors import ConfigError, SourceError

__all__ = ["check_server_certificate", "fingerprint", "load_trusted"]

_SUFFIXES = (".der", ".pem", ".crt", ".cer")


def load_trusted(paths: Iterable[Path]) -> list[x509.Certificate]:
    """Every certificate in the given files and directories (DER or PEM, PEM may hold many)."""
    out: list[x509.Certificate] = []
    for path in paths:
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _SUFFIXES) \
            if path.is_dir() else [path]
        for f in files:
            out.extend(_read(f))
    return out


def _read(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read trusted server certificate "
                          f"({exc.strerror})") from exc
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise ConfigError(f"{path}: not a DER or PEM certificate ({exc})") from exc


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def check_server_certificate(der: bytes, trusted: list[x509.Certificate], endpoint: str,
                             now: dt.datetime | None = None) -> x509.Certificate:
    """The server's certificate when trusted and valid now, else SourceError saying why."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise SourceError("untrusted_certificate",
                          f"{endpoint} sent no readable certificate ({exc})") from exc
    who = f"{endpoint} presents certificate {cert.subject.rfc4514_string()!r} " \
          f"(SHA-256 {fingerprint(cert)})"
    now = now or dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SourceError("untrusted_certificate",
                          f"{who}, valid only from {cert.not_valid_before_utc:%Y-%m-%d} to "
                          f"{cert.not_valid_after_utc:%Y-%m-%d}")
    pinned = fingerprint(cert)
    if any(fingerprint(t) == pinned for t in trusted):
        return cert
    for ca in trusted:
        if ca.subject != cert.issuer or not _is_ca(ca):
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):  # not its issuer, other key type
            continue
        return cert
    raise SourceError("untrusted_certificate",
                      f"{who}, which is not among trusted_server_certificates nor issued by "
                      "one of them: refused (add it there once its fingerprint is checked)")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
