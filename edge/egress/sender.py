"""The one output interface: every path off site is a Sender with a durable queue.

Two senders exist: the cloud uplink (:class:`~edge.egress.uplink.Uplink`, signed
reports over MQTT to the cloud broker) and the webhook
(:class:`~edge.egress.webhook.Webhook`, alert events POSTed to a site-chosen URL).
Both take a record with ``put`` only once it is durable in their own SQLite outbox,
deliver in order and at least once, delete a record only after the receiver
acknowledged it, and record every delivered record in the egress ledger
(:mod:`edge.egress.ledger`) under their ``destination`` before deleting it. So
``forewarn egress report`` shows everything that left the site, whatever the path.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

__all__ = ["Sender", "SenderHealth"]


class SenderHealth(NamedTuple):
    """What the status page and the metrics read off a sender."""

    connected: bool  # the receiver answered the last attempt (or none was needed yet)
    depth: int  # records waiting in the outbox
    detail: str = ""  # why not connected, or "" when fine


@runtime_checkable
class Sender(Protocol):
    """``put`` a record (durable when it returns), start, stop, depth, health."""

    destination: str  # as the ledger records it: scheme://host:port/path, no secrets

    def put(self, record: bytes) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def depth(self) -> int: ...

    def health(self) -> SenderHealth: ...
