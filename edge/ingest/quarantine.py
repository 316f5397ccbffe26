"""Shed topics that send nothing but rejects before they reach the decoder.

Good and junk messages share one connection and one queue, so under a flood of
junk every good reading waits behind junk that the decoder must look at first.
A topic whose last ``after`` messages were all rejected is *quarantined*: the
network thread drops its messages on arrival (counted, QoS 1 acked) and lets
one in ``probe_every`` through to the decoder. A probe that decodes lifts the
quarantine; so does any accepted message on the topic::

    >>> q = TopicQuarantine(after=3, probe_every=4)
    >>> [q.rejected("a/junk") for _ in range(3)]   # True: now quarantined
    [False, False, True]
    >>> [q.admit("a/junk") for _ in range(8)]
    [False, False, False, True, False, False, False, True]
    >>> q.accepted("a/junk"); q.admit("a/junk")
    True

What it costs: a sensor that sends ``after`` bad messages in a row and then
recovers loses at most ``probe_every - 1`` messages before a probe lets it back.
Topics that have sent at least one good message since their last run of rejects
are never touched.
"""

from __future__ import annotations

import threading


class TopicQuarantine:
    def __init__(self, after: int = 50, probe_every: int = 100,
                 max_topics: int = 65_536) -> None:
        if after < 1 or probe_every < 1:
            raise ValueError(f"quarantine after={after} and probe_every={probe_every} "
                             "must be >= 1")
        self.after = after
        self.probe_every = probe_every
        self._max_topics = max_topics
        self._lock = threading.Lock()
        self._streak: dict[str, int] = {}  # consecutive rejects per topic
        self._held: dict[str, int] = {}  # quarantined topic -> shed since the last probe

    def rejected(self, topic: str) -> bool:
        """Record a rejected message; True when this puts the topic in quarantine."""
        with self._lock:
            n = self._streak.get(topic, 0) + 1
            if n == 1 and len(self._streak) >= self._max_topics:
                # A flood of distinct topics: forget the streaks rather than grow
                # (their quarantines stay; an accepted message still lifts them).
                self._streak.clear()
            self._streak[topic] = n
            if n >= self.after and topic not in self._held:
                if len(self._held) >= self._max_topics:
                    return False
                self._held[topic] = 0
                return True
            return False

    def accepted(self, topic: str) -> None:
        """Record a decoded message: the topic is no longer a reject streak."""
        if topic in self._streak:  # unlocked fast path: good topics have no entry
            with self._lock:
                self._streak.pop(topic, None)
                self._held.pop(topic, None)

    def admit(self, topic: str) -> bool:
        """Network thread: False drops the message; every ``probe_every``-th passes."""
        if topic not in self._held:  # unlocked fast path for the normal case
            return True
        with self._lock:
            n = self._held.get(topic)
            if n is None:
                return True
            n += 1
            if n >= self.probe_every:
                self._held[topic] = 0
                return True
            self._held[topic] = n
            return False

    def quarantined(self) -> int:
        return len(self._held)
