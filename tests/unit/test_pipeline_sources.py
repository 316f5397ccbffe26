"""The input seam: the pipeline unpacks decoded batches itself and acknowledges every item
to the source it came from (raw messages to the site broker's, a batch to its origin)."""

from __future__ import annotations

import json
import queue
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import DecodeError
from edge.core.metrics import Metrics
from edge.ingest.batch import DecodedBatch
from edge.ingest.message import RAW_ORIGIN, Message
from edge.ingest.router import Router
from edge.ingest.source import Source, SourceHealth
from edge.ingest.topics import TopicMap
from edge.models.bundle import load_bundle
from edge.models.infer import Scorer
from edge.scoring.pipeline import Pipeline
from edge.scoring.ranges import bounds_of
from edge.scoring.window import WindowSet
from tests.bundlefactory import make_bundle


class Recorder:
    """A source that records what it is told to acknowledge."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.acked: list[list[Any]] = []

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def ack(self, items: Sequence[Any]) -> None:
        self.acked.append(list(items))

    def health(self) -> SourceHealth:
        return SourceHealth(True)


def _value(m: Metrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, labels or None)
    return 0.0 if v is None else v


def _pipeline(tmp_path: Path, sources: dict[str, Source],
              rejects: list[tuple[str, str, bytes]]) -> Pipeline:
    path, pub = make_bundle(tmp_path, signals=["a"], window=2, warning=50.0,
                            training={"a": (0.0, 100.0)}, plausible={"a": (-1e3, 1e3)})
    bundle = load_bundle(path, [pub])
    m = bundle.manifest
    router = Router(TopicMap(["forewarn/{site}/{asset}/{signal}"], "site1"), 65536)

    def on_reject(msg: Message, exc: DecodeError) -> None:
        rejects.append((exc.reason, msg.topic, msg.payload))

    return Pipeline(queue.Queue(), router.decode, WindowSet(["a"], period=1.0, window=2, hop=1,
                                                  max_hold=2, max_lateness=4),
                    Scorer(bundle), Metrics(), sources=sources, on_reject=on_reject,
                    bounds=bounds_of(m.signals, m.limits), max_future_skew_s=1e12)


def _batch(origin: str, ts: list[float], values: list[float], **kw: Any) -> DecodedBatch:
    return DecodedBatch(-1, -1, kw.pop("n_messages", len(ts)), [("m1", "a")],
                        np.zeros(len(ts), np.int32), np.asarray(ts), np.asarray(values),
                        origin=origin, needs_ack=True, **kw)


def test_items_are_acknowledged_to_their_own_source_in_order(tmp_path: Path) -> None:
    mqtt, opcua, workers = Recorder(RAW_ORIGIN), Recorder("opcua"), Recorder("ingest-workers")
    rejects: list[tuple[str, str, bytes]] = []
    p = _pipeline(tmp_path, {s.name: s for s in (mqtt, opcua, workers)}, rejects)
    raw = [Message("forewarn/site1/m1/a", json.dumps({"ts": t, "value": 1.0}).encode(),
                   1e9, i, 1) for i, t in enumerate([1.0, 2.0])]
    b1, b2 = _batch("opcua", [3.0], [2.0]), _batch("opcua", [4.0], [3.0])
    b3 = _batch("ingest-workers", [5.0], [4.0])
    p.process([raw[0], b1, b3, raw[1], b2])
    p._flush_and_ack(force=True)
    assert mqtt.acked == [raw]
    assert opcua.acked == [[b1, b2]]
    assert workers.acked == [[b3]]
    assert _value(p.metrics, "forewarn_readings_received_total") == 5
    assert not rejects


def test_a_batch_is_counted_and_dead_lettered_as_its_source_decoded_it(tmp_path: Path) -> None:
    src = Recorder("opcua")
    rejects: list[tuple[str, str, bytes]] = []
    p = _pipeline(tmp_path, {"opcua": src}, rejects)
    b = _batch("opcua", [1.0, 2.0, 3.0], [1.0, 5000.0, 2.0], n_messages=7, shed=2,
               rejects=[("ns=2;s=Press.T", "bad_type", "a boolean", b"true", 9.0)],
               letters=[("ns=2;s=Press.V", "non_finite", "NaN", b"nan", 9.5)],
               dropped={"non_finite": 1})
    p.process([b])
    m = p.metrics
    assert _value(m, "forewarn_messages_received_total") == 7  # what the batch stands for
    assert _value(m, "forewarn_ingest_queue_dropped_total") == 2
    assert _value(m, "forewarn_decode_errors_total", reason="bad_type") == 1
    assert _value(m, "forewarn_decode_errors_total", reason="non_finite") == 1
    assert _value(m, "forewarn_readings_dropped_total", reason="implausible") == 1
    assert _value(m, "forewarn_readings_received_total") == 2
    # The implausible reading's message stayed with its source: the stand-in names it.
    assert rejects == [("bad_type", "ns=2;s=Press.T", b"true"),
                       ("non_finite", "ns=2;s=Press.V", b"nan"),
                       ("implausible", "(decoded by source opcua)", b"")]
    p._flush_and_ack(force=True)
    assert src.acked == [[b]]


def test_the_site_connection_and_the_workers_are_sources(tmp_path: Path) -> None:
    from edge.ingest.message import MessageQueue
    from edge.ingest.mqtt import SiteConnection
    from edge.ingest.workers import IngestWorkers
    from tests.agentkit import agent_config

    cfg = agent_config(tmp_path / "state", *make_bundle(tmp_path, signals=["a"]), 1,
                       ingest={"processes": 2})
    inbox = MessageQueue(10)
    conn = SiteConnection(cfg.mqtt, cfg.site, [], inbox, Metrics())
    workers = IngestWorkers(cfg, [], inbox, 2)
    assert isinstance(conn, Source) and isinstance(workers, Source)
    assert (conn.name, workers.name) == (RAW_ORIGIN, "ingest-workers")
    # Neither started: not connected, and the health says why.
    assert conn.health() == SourceHealth(False, "site broker link down")
    assert workers.health() == SourceHealth(False, "2 of 2 ingest worker processes not "
                                                   "running")
