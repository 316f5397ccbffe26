"""The last check before anything is published on the site broker.

A topic the broker cannot accept (a NUL or other control character, a wildcard,
invalid UTF-8) does not fail one publish: Mosquitto treats the PUBLISH as a
malformed packet and drops the whole connection, the agent republishes every
retained state when it reconnects, and is dropped again. Names are checked at
every door (:mod:`edge.core.names`), but state written by an older version (an alert
or maintenance row in SQLite) can still hold one, so every outgoing topic is
checked here. A refused topic is quarantined for good: counted on every attempt,
logged once, never sent; everything else publishes as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from edge.core.names import topic_problem

log = logging.getLogger(__name__)
MAX_REMEMBERED = 10_000  # topics kept per verdict; beyond, still checked (and refused)


class PublishGuard:
    def __init__(self, on_refused: Callable[[], None] | None = None) -> None:
        self._on_refused = on_refused
        self._lock = threading.Lock()  # the API's threads and the pipeline's publish
        self._refused: dict[str, str] = {}  # topic -> problem
        # Topics already checked and found good: a set lookup, without the lock (the
        # GIL makes it atomic), where the check of every character cost ~5 µs of an
        # alert's path to its event. Topics are per asset, so this stays small.
        self._allowed: set[str] = set()
        self.refused_total = 0

    def allow(self, topic: str) -> bool:
        """True when ``topic`` may be published on; False (counted) when it is refused."""
        if topic in self._allowed:
            return True
        with self._lock:
            known = topic in self._refused
        if not known:
            problem = topic_problem(topic)
            if problem is None:
                if len(self._allowed) < MAX_REMEMBERED:
                    self._allowed.add(topic)
                return True
            with self._lock:
                first = len(self._refused) < MAX_REMEMBERED and topic not in self._refused
                if first:
                    self._refused[topic] = problem
            if first:
                log.error("not publishing on %r: the topic %s, and the broker would drop the "
                          "connection; quarantined (skipped from now on, counted in "
                          "forewarn_mqtt_publish_refused_total)", topic[:200], problem)
        with self._lock:
            self.refused_total += 1
        if self._on_refused is not None:
            self._on_refused()
        return False

    def quarantined(self) -> dict[str, str]:
        with self._lock:
            return dict(self._refused)
