"""The one input seam: every source of readings feeds the hot loop through it.

A source (the site broker, the ingest worker processes, an OPC UA server, …) puts
items into the hot loop's bounded inbox and is told, once the readings they carry
are durable, which of its items it may now acknowledge upstream. The hot loop knows
no transport: an item is either

* a :class:`~edge.ingest.message.Message` — raw bytes on a topic, decoded by the
  :class:`~edge.ingest.router.Router` (MQTT JSON and Sparkplug B), or
* a :class:`~edge.ingest.batch.DecodedBatch` — readings already decoded in columns
  (by a worker process, or by a source whose protocol carries typed values, such as
  OPC UA), naming the source that produced it in ``origin``.

Raw messages always belong to the site-broker source (named
:data:`~edge.ingest.message.RAW_ORIGIN`); a decoded batch is acknowledged to the
source its ``origin`` names. The pipeline is given the sources by name
(``Pipeline(sources=...)``) and unpacks a batch itself: no pseudo-topics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

__all__ = ["Source", "SourceHealth"]


class SourceHealth(NamedTuple):
    """What ``/healthz`` and the status page read off a source."""

    connected: bool
    detail: str = ""  # why not connected, or "" when fine


@runtime_checkable
class Source(Protocol):
    """Start, stop, acknowledge after durability, report health.

    ``ack`` receives exactly the items this source put into the inbox whose readings
    are now durable (stored, or scored when storage is off), in delivery order. A
    source that cannot acknowledge upstream (OPC UA subscriptions have no per-sample
    ack) may use it to advance its own resume point. The items are typed ``Any``
    here so that each source declares its own (``Sequence[Message]``,
    ``Sequence[DecodedBatch]``) and still is a Source.
    """

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def ack(self, items: Sequence[Any]) -> None: ...

    def health(self) -> SourceHealth: ...
