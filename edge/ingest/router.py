"""Route a received message to its decoder: Sparkplug B or JSON by topic template."""

from __future__ import annotations

from edge.errors import DecodeError
from edge.ingest.decode import DecodeResult, decode_json
from edge.ingest.sparkplug import NAMESPACE, SparkplugDecoder
from edge.ingest.topics import TopicMap

_SPB = NAMESPACE + "/"


class Router:
    def __init__(self, topics: TopicMap, max_bytes: int,
                 sparkplug: SparkplugDecoder | None = None) -> None:
        self.topics = topics
        self.max_bytes = max_bytes
        self.sparkplug = sparkplug

    def subscriptions(self) -> list[str]:
        subs = self.topics.subscriptions()
        return [*subs, _SPB + "#"] if self.sparkplug else subs

    def decode(self, topic: str, payload: bytes, now: float) -> DecodeResult:
        if topic.startswith(_SPB):
            if self.sparkplug is None:
                raise DecodeError("unknown_topic", "Sparkplug B is not enabled")
            return self.sparkplug.decode(topic, payload, now)
        match = self.topics.match(topic)
        if match is None:
            if self.topics.is_excluded(topic):
                return DecodeResult([])  # our own alerts/events echoing back: not an error
            raise DecodeError("unknown_topic", topic[:80])
        return decode_json(match, payload, now, self.max_bytes)
