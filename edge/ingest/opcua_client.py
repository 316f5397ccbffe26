"""An asyncua client for one configured server: security, trust and user identity.

Basic256Sha256 only on a server certificate this agent trusts (edge/ingest/opcua_trust.py):
the certificate the server lists for the chosen endpoint is checked first, then the
secure channel is bound to it. Certificate and key files are read at every connect, so
a renewed certificate or an added trust needs no restart.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto import uacrypto
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

from edge.core.config import read_secret
from edge.core.errors import ConfigError, SourceError
from edge.core.opcua_config import OpcUaServerConfig
from edge.ingest.opcua_trust import check_server_certificate, load_trusted

__all__ = ["REASONS", "describe", "failure_reason", "new_client"]

# Bounded vocabulary of forewarn_opcua_connect_errors_total{reason}.
REASONS = ("untrusted_certificate", "security_rejected", "auth_rejected", "unreachable",
           "timeout", "config", "protocol")
_AUTH = {"BadUserAccessDenied", "BadIdentityTokenInvalid", "BadIdentityTokenRejected",
         "BadUserSignatureInvalid"}


def failure_reason(exc: BaseException) -> str:
    """The bounded reason a connection attempt failed for."""
    if isinstance(exc, SourceError):
        return exc.reason
    if isinstance(exc, ConfigError):
        return "config"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ua.UaStatusCodeError):
        name = ua.StatusCode(exc.code).name
        if name in _AUTH:
            return "auth_rejected"
        if name.startswith(("BadCertificate", "BadSecurity", "BadNonce")):
            return "security_rejected"
        return "protocol"
    if isinstance(exc, OSError):
        return "unreachable"
    if isinstance(exc, ua.UaError) and "certificate mismatch" in str(exc).lower():
        return "untrusted_certificate"
    return "protocol"


def describe(exc: BaseException) -> str:
    if isinstance(exc, ua.UaStatusCodeError):
        sc = ua.StatusCode(exc.code)
        return f"{sc.name} ({sc.doc})" if sc.doc else sc.name
    return str(exc) or type(exc).__name__


async def new_client(cfg: OpcUaServerConfig) -> Client:
    """A client ready to ``connect()``: endpoint, timeouts, security and identity."""
    c = Client(cfg.endpoint, timeout=cfg.request_timeout_s, watchdog_intervall=2.0)
    c.application_uri = cfg.application_uri
    c.name = c.description = "Forewarn agent"
    c.product_uri = "urn:forewarn"
    # The session must outlive the subscription, or the queues die with it.
    c.session_timeout = int(cfg.subscription_lifetime_s * 1000)
    if cfg.security_policy == "Basic256Sha256":
        await _secure(c, cfg)
    if cfg.auth == "username":
        assert cfg.username is not None
        c.set_user(cfg.username)
        c.set_password(read_secret(cfg.password_file) or "")
    elif cfg.auth == "certificate":
        cert = cfg.user_certificate_file or cfg.certificate_file
        key = cfg.user_private_key_file or cfg.private_key_file
        assert cert is not None and key is not None
        c.user_certificate = await uacrypto.load_certificate(*_content(cert))
        key_bytes, key_format = _content(key)
        c.user_private_key = await uacrypto.load_private_key(key_bytes, None, key_format)
    return c


async def _secure(c: Client, cfg: OpcUaServerConfig) -> None:
    """Basic256Sha256 on a server certificate checked against the trusted ones."""
    trusted = load_trusted(cfg.trusted_server_certificates)
    mode = ua.MessageSecurityMode.Sign if cfg.security_mode == "Sign" \
        else ua.MessageSecurityMode.SignAndEncrypt
    endpoints = await asyncio.wait_for(c.connect_and_get_server_endpoints(),
                                       cfg.request_timeout_s)
    uri = SecurityPolicyBasic256Sha256.URI
    match = [e for e in endpoints if e.SecurityPolicyUri == uri and e.SecurityMode == mode]
    if not match:
        offered = sorted({f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]} {e.SecurityMode.name}"
                          for e in endpoints})
        raise SourceError("security_rejected", f"no Basic256Sha256 {cfg.security_mode} "
                          f"endpoint (offered: {', '.join(offered)})")
    der = uacrypto.der_from_x509(uacrypto.x509_from_der(match[0].ServerCertificate))
    check_server_certificate(der, trusted, cfg.endpoint)
    assert cfg.certificate_file is not None and cfg.private_key_file is not None
    cert, key = _content(cfg.certificate_file), _content(cfg.private_key_file)
    await c.set_security(SecurityPolicyBasic256Sha256,
                         uacrypto.CertProperties(cert[0], cert[1]),
                         uacrypto.CertProperties(key[0], key[1]),
                         server_certificate=uacrypto.CertProperties(der, "der"), mode=mode)


def _content(path: Path) -> tuple[bytes, str]:
    """A certificate or key file's bytes and its format, or ConfigError naming it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    return data, "pem" if data.lstrip().startswith(b"-----BEGIN") else "der"
