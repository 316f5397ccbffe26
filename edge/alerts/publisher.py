"""The alert manager's one output: the site broker, and every sender off site.

Retained alert state and events go to the site broker (on site: the crew's
displays, the SCADA); events, not the retained state, also go to each
:class:`~edge.egress.sender.Sender` given (the webhook), which queues them
durably and records each delivery in the egress ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from edge.egress.sender import Sender

__all__ = ["AlertPublisher"]


class SitePublish(Protocol):
    """:meth:`edge.ingest.mqtt.SiteConnection.publish`."""

    def __call__(self, topic: str, payload: bytes, retain: bool = False) -> object: ...


class AlertPublisher:
    """Called as ``(topic, payload, retain)`` by the alert manager (its ``publish``)."""

    def __init__(self, site: SitePublish, senders: Sequence[Sender] = ()) -> None:
        self.site = site
        self.senders = list(senders)

    def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.site(topic, payload, retain=retain)
        if not retain:  # events, not the retained state
            for sender in self.senders:
                sender.put(payload)
