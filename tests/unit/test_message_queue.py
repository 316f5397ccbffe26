"""The ingest queue counts messages, not items: a socket burst is one item of many."""

from __future__ import annotations

import queue

import pytest

from edge.ingest.message import Message, MessageQueue


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
