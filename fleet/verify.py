"""From wire bytes to a storable report: size, envelope signature, body schema, site match.

Each refusal is a :class:`edge.core.errors.ReportRefused` with a reason from
:data:`REASONS` (a bounded label set for the metrics).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.core.errors import EgressError, ReportRefused
from edge.egress.envelope import canonical, open_envelope
from edge.egress.health import validate_health
from edge.egress.schema import validate
from fleet.store import Report

REASONS = ("oversized", "malformed", "unsigned", "unknown_site", "bad_signature", "schema",
           "site_mismatch", "replay")


def verify(payload: bytes, keys: dict[str, Ed25519PublicKey], *, max_bytes: int, k: int,
           received: float) -> Report:
    if len(payload) > max_bytes:
        raise ReportRefused("oversized", f"{len(payload)} bytes > max_report_bytes={max_bytes}")
    env = open_envelope(payload, keys)
    try:
        if env.kind == "drift":
            d = validate(env.body, k)
            site, hour, model, group = d.site_id, d.hour, d.model, d.group
        else:
            h = validate_health(env.body, k)
            site, hour, model, group = h.site_id, h.hour, "", 0
    except EgressError as exc:
        raise ReportRefused("schema", f"site_id={env.site_id!r} seq={env.seq}: {exc}") from exc
    if site != env.site_id:
        raise ReportRefused("site_mismatch", f"envelope site_id={env.site_id!r} but body "
                                             f"site_id={site!r}")
    return Report(env.site_id, env.seq, env.kind, received, hour, model, group,
                  canonical(env.body).decode())
