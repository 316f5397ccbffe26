"""The hot loop's input items and its bounded inbox: no transport in them.

A :class:`Message` is raw bytes on a topic with the time it was received and what
its source needs to acknowledge it (MQTT packet id and QoS; a source without
per-message acknowledgement leaves ``mid`` and ``qos`` at 0). The inbox carries
messages one by one, in bursts (a list), or as already-decoded
:class:`~edge.ingest.batch.DecodedBatch` columns (see :mod:`edge.ingest.source`).
"""

from __future__ import annotations

import queue
from typing import NamedTuple

from edge.ingest.batch import DecodedBatch

__all__ = ["RAW_ORIGIN", "InboxItem", "Message", "MessageQueue"]

# The source raw messages are acknowledged to: the site broker's connection.
RAW_ORIGIN = "mqtt"


class Message(NamedTuple):
    topic: str
    payload: bytes
    received: float  # wall-clock epoch s
    mid: int
    qos: int


InboxItem = Message | list[Message] | DecodedBatch


class MessageQueue(queue.Queue[InboxItem]):
    """The bounded ingest queue; an item is a Message, a burst of them, or a decoded batch.

    The network thread hands over a burst in one ``put``: a lock and a wake-up per
    message were ~2.6 us of the ~24 us a single-reading message costs. Sizes and the
    bound count messages, not items (a decoded batch counts as one), so
    ``ingest.queue_size`` keeps its meaning.
    """

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self._messages = 0

    def _qsize(self) -> int:
        return self._messages

    def _put(self, item: InboxItem) -> None:
        self._messages += _count(item)
        self.queue.append(item)

    def _get(self) -> InboxItem:
        item: InboxItem = self.queue.popleft()
        self._messages -= _count(item)
        return item


def _count(item: InboxItem) -> int:
    return len(item) if type(item) is list else 1
