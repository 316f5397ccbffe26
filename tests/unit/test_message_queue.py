"""The ingest queue counts messages, not items: a socket burst is one item of many; and
it counts bytes (payload, topic and a fixed overhead a message) against its byte bound."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from edge.ingest.batch import DecodedBatch
from edge.ingest.message import (
    MESSAGE_OVERHEAD,
    Message,
    MessageQueue,
    item_bytes,
    message_bytes,
)


def _m(i: int) -> Message:
    return Message(f"forewarn/site1/a{i}", b"{}", 0.0, i, 1)


def test_size_and_bound_count_messages_in_bursts() -> None:
    q = MessageQueue(5)
    q.put_nowait([_m(1), _m(2), _m(3)])
    q.put_nowait(_m(4))
    assert q.qsize() == 4 and not q.full()
    q.put_nowait([_m(5), _m(6)])  # admitted while below the bound: at most one burst over
    assert q.qsize() == 6 and q.full()
    with pytest.raises(queue.Full):
        q.put_nowait(_m(7))
    first = q.get_nowait()
    assert isinstance(first, list) and [m.mid for m in first] == [1, 2, 3]
    assert q.qsize() == 3 and not q.full()
    assert q.get_nowait() == _m(4)
    assert [m.mid for m in q.get_nowait()] == [5, 6]
    assert q.qsize() == 0 and q.empty()
    with pytest.raises(queue.Empty):
        q.get_nowait()


def test_get_blocks_until_a_burst_arrives() -> None:
    q = MessageQueue(0)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    q.put([_m(1)])
    assert q.get(timeout=1) == [_m(1)]


def _b(i: int, size: int) -> Message:
    return Message(f"t{i}", b"x" * size, 0.0, i, 1)


def test_bytes_of_messages_bursts_and_batches() -> None:
    m = _b(1, 100)
    assert message_bytes(m.topic, m.payload) == item_bytes(m) == 102 + MESSAGE_OVERHEAD
    assert item_bytes([m, _b(2, 10)]) == 102 + 12 + 2 * MESSAGE_OVERHEAD
    batch = DecodedBatch(worker=0, seq=0, n_messages=3, keys=[("a", "s")],
                         key_idx=np.zeros(1000, np.int32), ts=np.zeros(1000),
                         value=np.zeros(1000))
    assert item_bytes(batch) > 4000 + 8000 + 8000  # its arrays at least


def test_the_byte_bound_admits_one_item_over_and_frees_bytes_on_get() -> None:
    one = item_bytes(_b(0, 100))
    q = MessageQueue(1000, max_bytes=3 * one)
    q.put_nowait([_b(1, 100), _b(2, 100)])
    assert q.bytes == 2 * one and not q.full()
    q.put_nowait([_b(3, 100), _b(4, 100)])  # below the bound when put: admitted whole
    assert q.bytes == 4 * one and q.full() and q.qsize() == 4
    with pytest.raises(queue.Full):
        q.put_nowait(_b(5, 1))
    with pytest.raises(queue.Full):
        q.put(_b(5, 1), timeout=0)
    assert [m.mid for m in q.get_nowait()] == [1, 2]  # type: ignore[union-attr]
    assert q.bytes == 2 * one and not q.full()
    q.get_nowait()
    assert q.bytes == 0 and q.empty()


def test_an_empty_queue_takes_an_item_larger_than_the_bound() -> None:
    q = MessageQueue(1000, max_bytes=100)
    q.put_nowait(_b(1, 10_000))  # else one big batch would wedge the stream
    assert q.full() and q.bytes == item_bytes(_b(1, 10_000))
    q.get_nowait()
    assert q.bytes == 0


def test_the_caller_counted_bytes_are_what_is_freed() -> None:
    q = MessageQueue(1000, max_bytes=1000)
    q.put([_b(1, 1), _b(2, 1)], nbytes=600)  # the network thread sums as it reads
    assert q.bytes == 600
    q.put(_b(3, 1), nbytes=500)
    assert q.full()
    q.get_nowait()
    assert q.bytes == 500


def test_a_put_waits_for_room_and_a_cancel_ends_the_wait() -> None:
    q = MessageQueue(1000, max_bytes=10)
    q.put_nowait(_b(1, 100))
    done = threading.Event()

    def put_when_room() -> None:
        q.put(_b(2, 1), timeout=60)
        done.set()

    t = threading.Thread(target=put_when_room)
    t.start()
    assert not done.is_set()
    assert q.get(timeout=5) == _b(1, 100)  # room: the waiting put goes through
    t.join(30)
    assert done.is_set() and q.get_nowait() == _b(2, 1)

    q.put_nowait(_b(3, 100))
    cancel = threading.Event()
    raised: list[BaseException] = []

    def put_until_cancelled() -> None:
        try:
            q.put(_b(4, 1), timeout=60, cancel=cancel)
        except queue.Full as exc:
            raised.append(exc)

    t = threading.Thread(target=put_until_cancelled)
    t.start()
    cancel.set()
    t.join(30)
    assert not t.is_alive() and len(raised) == 1 and q.qsize() == 1


def test_a_waiting_put_resumes_only_once_the_queue_is_down_to_half() -> None:
    one = item_bytes(_b(0, 100))
    q = MessageQueue(1000, max_bytes=4 * one)
    for i in range(4):
        q.put_nowait(_b(i, 100))
    assert q.full()
    t = threading.Thread(target=lambda: q.put(_b(9, 100), timeout=60))
    t.start()
    q.get_nowait()  # room for one, but 3/4 full: the putter keeps waiting
    t.join(0.3)
    assert t.is_alive() and q.qsize() == 3
    q.get_nowait()  # down to half: it goes in
    t.join(30)
    assert not t.is_alive() and q.qsize() == 3 and q.bytes == 3 * one
