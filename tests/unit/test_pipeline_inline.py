"""The network thread's run-to-completion path (Pipeline.try_inline): taken only when
nothing earlier is queued or in progress, so every message is processed once, in order."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from edge.core.metrics import Metrics
from edge.ingest.message import RAW_ORIGIN, Message, MessageQueue
from edge.ingest.router import Router
from edge.ingest.topics import TopicMap
from edge.models.bundle import load_bundle
from edge.models.infer import ScoredWindow, Scorer
from edge.scoring.pipeline import Pipeline
from edge.scoring.window import WindowSet
from tests.bundlefactory import make_bundle
from tests.unit.test_pipeline_sources import Recorder


class Scores:
    def __init__(self, pipeline_ref: list[Pipeline]) -> None:
        self.seen: list[tuple[str, float, bool]] = []
        self.ref = pipeline_ref

    def on_scores(self, windows: list[ScoredWindow]) -> None:
        inline = self.ref[0].inline_active()
        self.seen.extend((w.asset, w.ts, inline) for w in windows)


def _pipeline(tmp_path: Path) -> tuple[Pipeline, MessageQueue, Scores, Recorder]:
    path, pub = make_bundle(tmp_path, signals=["a"], window=2, warning=50.0)
    router = Router(TopicMap(["forewarn/{site}/{asset}/{signal}"], "site1"), 65536)
    inbox = MessageQueue(10_000)
    ref: list[Pipeline] = []
    sink = Scores(ref)
    acks = Recorder(RAW_ORIGIN)
    p = Pipeline(inbox, router.decode, WindowSet(["a"], period=1.0, window=2, hop=1,
                                                 max_hold=0, max_lateness=0),
                 Scorer(load_bundle(path, [pub])), Metrics(), sinks=[sink],
                 sources={RAW_ORIGIN: acks}, max_future_skew_s=1e12)
    ref.append(p)
    return p, inbox, sink, acks


def _msg(asset: str, ts: float, mid: int = 0) -> Message:
    return Message(f"forewarn/site1/{asset}/a", json.dumps({"ts": ts, "value": 1.0}).encode(),
                   1e9, mid, 1)


def test_inline_only_when_nothing_is_queued_or_taken_and_not_stopping(tmp_path: Path) -> None:
    p, inbox, sink, acks = _pipeline(tmp_path)
    assert p.try_inline([_msg("m1", 1.0), _msg("m1", 2.0)])
    assert sink.seen == [("m1", 2.0, True)] and not p.inline_active()
    assert sum(map(len, acks.acked)) == 2  # storage off: acknowledged at once
    inbox.put(_msg("m1", 3.0))
    assert not p.try_inline([_msg("m1", 4.0)])  # an earlier message is queued
    item = inbox.get()
    assert not p.try_inline([_msg("m1", 4.0)])  # taken, not yet processed
    p.process([item])
    inbox.done(1)
    assert p.try_inline([_msg("m1", 4.0)])
    assert [ts for _, ts, _ in sink.seen] == [2.0, 3.0, 4.0]
    p._stop.set()
    assert not p.try_inline([_msg("m1", 5.0)])  # stopping: queued for the final drain


def test_a_burst_handled_inline_while_the_thread_drains_keeps_every_message_in_order(
        tmp_path: Path) -> None:
    p, inbox, sink, acks = _pipeline(tmp_path)
    p.start()
    try:
        # One producer, as the network thread: inline when it may, else queued.
        inline = 0
        for i in range(1, 3001):
            burst = [_msg("m1", float(i), i)]
            if p.try_inline(burst):
                inline += 1
            else:
                inbox.put(burst if i % 2 else burst[0])
    finally:
        p.stop()
    ends = [ts for _, ts, _ in sink.seen]
    assert sorted(ends) == ends  # no window scored out of its arrival order
    assert sum(map(len, acks.acked)) == 3000  # every message processed (and acked) once
    assert sorted(m.mid for a in acks.acked for m in a) == list(range(1, 3001))
    assert 0 < inline < 3000  # both paths were taken
    assert any(i for *_, i in sink.seen) and not all(i for *_, i in sink.seen)


def test_the_pipeline_thread_waits_for_an_inline_batch_in_progress(tmp_path: Path) -> None:
    p, inbox, sink, _ = _pipeline(tmp_path)
    entered, release = threading.Event(), threading.Event()
    real = p.process

    def slow(msgs: list, **kw: object) -> None:
        if kw.get("flush") is False:
            entered.set()
            release.wait(5)
        real(msgs, **kw)  # type: ignore[arg-type]

    p.process = slow  # type: ignore[method-assign]
    t = threading.Thread(target=p.try_inline, args=([_msg("m1", 1.0), _msg("m1", 2.0)],))
    t.start()
    assert entered.wait(5)
    inbox.put(_msg("m1", 3.0))  # arrives while the inline batch runs
    p.start()
    release.set()
    t.join(5)
    p.stop()
    assert [ts for _, ts, _ in sink.seen] == [2.0, 3.0]
