"""The hot loop's input items and its bounded inbox: no transport in them.

A :class:`Message` is raw bytes on a topic with the time it was received and what
its source needs to acknowledge it (MQTT packet id and QoS; a source without
per-message acknowledgement leaves ``mid`` and ``qos`` at 0). The inbox carries
messages one by one, in bursts (a list), or as already-decoded
:class:`~edge.ingest.batch.DecodedBatch` columns (see :mod:`edge.ingest.source`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import NamedTuple

from edge.ingest.batch import DecodedBatch

__all__ = ["MESSAGE_OVERHEAD", "RAW_ORIGIN", "InboxItem", "Message", "MessageQueue",
           "item_bytes", "message_bytes"]

# The source raw messages are acknowledged to: the site broker's connection.
RAW_ORIGIN = "mqtt"

# Bytes a queued Message holds beyond its payload and topic characters (CPython 3.11,
# 64-bit): the 5-tuple (80), the payload's bytearray header (57), the topic str's
# header (49), the float (24), its list slot (8) and the allocator's rounding. The
# byte bound is on this estimate, not on a measurement of the heap.
MESSAGE_OVERHEAD = 240
_BATCH_OVERHEAD = 512  # a DecodedBatch's object and its lists, beyond its arrays
_KEY_BYTES = 128  # one (asset, signal) key of a DecodedBatch: the tuple and two strs


class Message(NamedTuple):
    topic: str
    payload: bytes
    received: float  # wall-clock epoch s
    mid: int
    qos: int


InboxItem = Message | list[Message] | DecodedBatch


def message_bytes(topic: str, payload: bytes) -> int:
    """What one queued message counts against ``ingest.queue_bytes``."""
    return len(payload) + len(topic) + MESSAGE_OVERHEAD


def item_bytes(item: InboxItem) -> int:
    """What an inbox item counts against the byte bound (an estimate of the memory it
    holds: payloads, topics and object headers; a batch's arrays)."""
    if type(item) is list:
        return sum(len(m.payload) + len(m.topic) for m in item) + MESSAGE_OVERHEAD * len(item)
    if isinstance(item, DecodedBatch):
        return (item.key_idx.nbytes + item.ts.nbytes + item.value.nbytes
                + sum(s.values.nbytes for s in item.series) + _KEY_BYTES * len(item.keys)
                + sum(len(r[3]) for r in item.rejects) + _BATCH_OVERHEAD)
    m: Message = item  # type: ignore[assignment]
    return message_bytes(m.topic, m.payload)


class MessageQueue(queue.Queue[InboxItem]):
    """The bounded ingest queue; an item is a Message, a burst of them, or a decoded batch.

    The network thread hands over a burst in one ``put``: a lock and a wake-up per
    message were ~2.6 us of the ~24 us a single-reading message costs. Sizes and the
    ``maxsize`` bound count messages, not items (a decoded batch counts as one), so
    ``ingest.queue_size`` keeps its meaning. ``max_bytes`` (``ingest.queue_bytes``)
    bounds the bytes queued as well (:func:`item_bytes`): a burst of small messages
    from a backlog then waits in the broker and the socket, not in the agent's heap.

    Either bound admits one item more while it is not reached (a burst is never
    split), and an empty queue admits any item, however large, so one big batch
    cannot wedge the stream. ``put(..., cancel=event)`` gives up waiting (raises
    ``queue.Full``) once the event is set.

    A put that had to wait resumes only once the queue is down to half of both
    bounds (hysteresis): woken at every ``get``, the network thread took the GIL for
    one burst at a time, a thread hand-over per burst while a backlog drained.
    """

    def __init__(self, maxsize: int = 0, max_bytes: int = 0) -> None:
        self.max_bytes = max_bytes
        super().__init__(maxsize)
        # Putters that wait for room wait here, on the queue's own lock; _get wakes
        # them only when the queue has drained to half (see the class docstring).
        self._room_cond = threading.Condition(self.mutex)

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self._messages = 0
        self._bytes = 0
        self._sizes: deque[int] = deque()
        self._waiting = 0
        self._taken = 0  # items got but not yet reported done() by their consumer

    @property
    def bytes(self) -> int:
        """Bytes queued (the estimate the bound applies to)."""
        with self.mutex:
            return self._bytes

    def _qsize(self) -> int:
        return self._messages

    def full(self) -> bool:
        with self.mutex:
            return not self._room()

    def _room(self) -> bool:
        if 0 < self.maxsize <= self._messages:
            return False
        return not (0 < self.max_bytes <= self._bytes)

    def _half_empty(self) -> bool:
        return (not 0 < self.maxsize < 2 * self._messages
                and not 0 < self.max_bytes < 2 * self._bytes)

    def put(self, item: InboxItem, block: bool = True, timeout: float | None = None,
            nbytes: int | None = None, cancel: threading.Event | None = None) -> None:
        """Queue ``item`` (``nbytes``: its :func:`item_bytes`, when the caller knows it)."""
        size = item_bytes(item) if nbytes is None else nbytes
        with self.not_full:
            if not self._room():
                if not block:
                    raise queue.Full
                if timeout is not None and timeout < 0:
                    raise ValueError("'timeout' must be a non-negative number")
                end = None if timeout is None else time.monotonic() + timeout
                while not self._half_empty():
                    if cancel is not None and cancel.is_set():
                        raise queue.Full
                    left = 0.1 if end is None else min(0.1, end - time.monotonic())
                    if left <= 0:
                        if self._room():  # drained, if not to half: take the room there is
                            break
                        raise queue.Full
                    # Polled in 0.1 s steps so that ``cancel`` ends the wait promptly.
                    self._waiting += 1
                    try:
                        self._room_cond.wait(left)
                    finally:
                        self._waiting -= 1
            self.queue.append(item)
            self._sizes.append(size)
            self._messages += _count(item)
            self._bytes += size
            self.unfinished_tasks += 1
            self.not_empty.notify()

    def _put(self, item: InboxItem) -> None:  # only through put() above
        raise AssertionError("MessageQueue._put is not used")

    def idle(self) -> bool:
        """Nothing queued, and nothing taken whose consumer has not called :meth:`done`.

        What a producer checks before handling an item itself instead of queueing
        it: then no earlier item can still be on its way (edge/scoring/pipeline.py).
        """
        with self.mutex:
            return not self.queue and not self._taken

    def done(self, items: int) -> None:
        """The consumer has handled ``items`` items it took."""
        with self.mutex:
            self._taken -= items

    def _get(self) -> InboxItem:
        item: InboxItem = self.queue.popleft()
        self._taken += 1
        self._messages -= _count(item)
        self._bytes -= self._sizes.popleft()
        if self._waiting and self._half_empty():
            self._room_cond.notify_all()
        return item


def _count(item: InboxItem) -> int:
    return len(item) if type(item) is list else 1
