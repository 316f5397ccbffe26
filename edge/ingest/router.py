"""Route a received message to its decoder: Sparkplug B or JSON by topic template.

The router also feeds the topic quarantine (edge/ingest/quarantine.py): it sees
every decode outcome, and the network thread asks it, through :meth:`admit`,
whether a message is worth queueing at all.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from edge.core.errors import DecodeError
from edge.ingest.decode import DecodeResult, decode_json
from edge.ingest.quarantine import TopicQuarantine
from edge.ingest.ratelog import RateLimitedLog
from edge.ingest.topics import SPARKPLUG_NAMESPACE, TopicMap

if TYPE_CHECKING:
    from edge.ingest.sparkplug import SparkplugDecoder

log = logging.getLogger(__name__)
_SPB = SPARKPLUG_NAMESPACE + "/"


class Router:
    def __init__(self, topics: TopicMap, max_bytes: int,
                 sparkplug: SparkplugDecoder | None = None,
                 quarantine: TopicQuarantine | None = None) -> None:
        self.topics = topics
        self.max_bytes = max_bytes
        self.sparkplug = sparkplug
        self.quarantine = quarantine or TopicQuarantine()
        self._ratelog = RateLimitedLog(log, 60.0)

    def subscriptions(self) -> list[str]:
        subs = self.topics.subscriptions()
        return [*subs, _SPB + "#"] if self.sparkplug else subs

    def admit(self, topic: str) -> bool:
        """Network thread: False for a quarantined topic's message (not a probe)."""
        return self.quarantine.admit(topic)

    def decode(self, topic: str, payload: bytes, now: float) -> DecodeResult:
        try:
            res = self._decode(topic, payload, now)
        except DecodeError:
            # Sparkplug topics stay out: a node's births and deaths must all arrive.
            if not topic.startswith(_SPB) and self.quarantine.rejected(topic):
                self._ratelog.warning(
                    "quarantine", "topic %s sent %d rejected messages in a row: quarantined "
                    "(1 in %d still decoded; counted as decode errors 'quarantined'; "
                    "%d topics held)", topic[:120], self.quarantine.after,
                    self.quarantine.probe_every, self.quarantine.quarantined())
            raise
        self.quarantine.accepted(topic)
        return res

    def _decode(self, topic: str, payload: bytes, now: float) -> DecodeResult:
        if topic.startswith(_SPB):
            if self.sparkplug is None:
                raise DecodeError("unknown_topic", "Sparkplug B is not enabled")
            return self.sparkplug.decode(topic, payload, now)
        match = self.topics.match(topic)
        if match is None:
            if self.topics.is_excluded(topic):
                return DecodeResult([])  # our own alerts/events echoing back: not an error
            problem = self.topics.refusal(topic)
            if problem is not None:
                raise DecodeError("bad_name", problem)
            raise DecodeError("unknown_topic", topic[:80])
        return decode_json(match, payload, now, self.max_bytes)
