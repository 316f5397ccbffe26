"""The outbox as the report producers see it: each body is sealed (signed, numbered) on put.

Sealing at put time means a report's sequence number is fixed before it waits
in the outbox: a re-send after a crash carries the same (site_id, seq) and the
fleet stores it once. When the outbox overflows, two sealed rows of the same
kind are pooled (drift: window-weighted merge; health: the newer snapshot
supersedes the older, its figures being cumulative) and re-sealed under the
older row's number, keeping the order; the newer number then shows as a gap.
Rows of different kinds cannot be pooled: the outbox drops the older, counted.
"""

from __future__ import annotations

from typing import Protocol

from edge.core.errors import EgressError
from edge.egress.envelope import Kind, Sealer, canonical, peek
from edge.egress.schema import merge_payloads


class _Queue(Protocol):
    """The outbox itself, or the uplink (a Sender) that appends to it and wakes up."""

    def put(self, record: bytes, /) -> object: ...


class SealedOutbox:
    """``put(body)`` seals ``body`` as ``kind`` and appends it to the shared outbox."""

    def __init__(self, outbox: _Queue, sealer: Sealer, kind: Kind) -> None:
        self.outbox, self.sealer, self.kind = outbox, sealer, kind

    def put(self, payload: bytes) -> None:
        self.outbox.put(self.sealer.seal(self.kind, payload))


def merge_sealed(sealer: Sealer, older: bytes, newer: bytes, k: int) -> bytes:
    """Pool two sealed rows into one sealed row at ``older``'s sequence number."""
    a, b = peek(older), peek(newer)
    if a.kind != b.kind:
        raise EgressError(f"cannot pool a {a.kind} report with a {b.kind} report")
    if a.kind == "drift":
        body = merge_payloads(canonical(a.body), canonical(b.body), k)
    else:
        body = canonical(b.body)
    return sealer.seal(a.kind, body, seq=a.seq)  # type: ignore[arg-type]
