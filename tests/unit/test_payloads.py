"""The replay's payloads, decoded by the agent's own JSON and Sparkplug B decoders:
exactly the streams' values, in time order, each asset's last message marked."""

from __future__ import annotations

import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from edge.core.errors import DecodeError
from edge.ingest.decode import decode_json
from edge.ingest.readings import Reading, Series
from edge.ingest.sparkplug import SparkplugDecoder
from edge.ingest.topics import TopicMap
from trainer.payloads import FORMATS, Message, Stream, messages, missing, name_problems

T0 = 1_760_000_000.0
SIGNALS = ["a", "b"]


def _streams() -> list[Stream]:
    t = T0 + np.arange(12.0)
    a = np.vstack([np.arange(12.0), np.r_[np.arange(5.0), np.nan, np.arange(6.0)]])
    t2 = T0 + np.r_[np.arange(3.0), 7.0, 8.0, 9.5]  # a gap, then a step of 1.5
    b = np.vstack([np.full(6, 2.5), np.full(6, np.nan)])
    b[:, 3] = np.nan  # a row with nothing in it is no message
    return [Stream("m1", t, a), Stream("m2", t2, b)]


def _want(streams: list[Stream], prefix: str = "") -> list[tuple[str, str, float, float]]:
    return sorted((prefix + s.asset, SIGNALS[i], float(s.ts[j]), float(s.values[i, j]))
                  for s in streams for i in range(len(SIGNALS)) for j in range(len(s.ts))
                  if np.isfinite(s.values[i, j]))


def _decode(msgs: list[Message], tmp: Path) -> list[tuple[str, str, float, float]]:
    topics = TopicMap(["forewarn/{site}/{asset}/{signal}", "forewarn/{site}/{asset}"], "s1")
    spb = SparkplugDecoder(tmp / "c.json", lambda _g, _n: None, persist_interval_s=3600)
    out = []
    for m in msgs:
        match = topics.match(m.topic)
        res = spb.decode(m.topic, m.payload, time.time()) if match is None else \
            decode_json(match, m.payload, time.time(), 1 << 20)
        assert res.dropped is None and res.stamped_on_receipt == 0
        got = 0
        for it in res.items:
            if isinstance(it, Reading):
                out.append((it.asset, it.signal, it.ts, it.value))
                got += 1
            else:
                assert isinstance(it, Series)
                out += [(it.asset, it.signal, it.t0 + i * it.dt, float(v))
                        for i, v in enumerate(it.values)]
                got += len(it.values)
        assert got == m.readings, m
    return sorted(out)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_decodes_to_exactly_the_streams(tmp_path: Path, fmt: str) -> None:
    streams = _streams()
    msgs = list(messages(fmt, streams, SIGNALS, site="s1", period=1.0, batch=4))
    prefix = "replay." if fmt == "sparkplug" else ""
    assert _decode(msgs, tmp_path) == _want(streams, prefix)
    assert missing(streams) == 1 + 1 + 6  # m1 b once; m2 a once, b always
    assert all(x.due <= y.due for x, y in pairwise(msgs))  # time order
    lasts = [m for m in msgs if m.last]
    assert [m.asset for m in lasts] == ["m2", "m1"]  # m2's rows end first
    for m in lasts:
        assert m is [x for x in msgs if x.asset == m.asset][-1]


def test_batches_end_at_a_gap_a_missing_value_and_the_size() -> None:
    msgs = list(messages("batched", _streams(), SIGNALS, site="s1", period=1.0, batch=4))
    sizes = sorted((m.topic.split("/")[2:], m.readings) for m in msgs)
    # m1 a: 12 samples in 4s; m1 b: 5 + 6 around the NaN; m2 a: 3, then 7, then 9.5 alone
    assert sizes == sorted([(["m1", "a"], 4)] * 3 + [(["m1", "b"], 4), (["m1", "b"], 1),
                                                     (["m1", "b"], 4), (["m1", "b"], 2),
                                                     (["m2", "a"], 3), (["m2", "a"], 1),
                                                     (["m2", "a"], 1)])


def test_sparkplug_sequence_wraps_without_a_gap(tmp_path: Path) -> None:
    n = 300
    s = Stream("d1", T0 + np.arange(float(n)), np.vstack([np.arange(float(n))] * 2))
    msgs = list(messages("sparkplug", [s], SIGNALS, group="g", node="n1"))
    kinds = [m.topic.split("/")[2] for m in msgs]
    assert kinds == ["NBIRTH", "DBIRTH", *["DDATA"] * n, "NDEATH"]
    spb = SparkplugDecoder(tmp_path / "c.json", lambda _g, _n: None)
    for m in msgs:
        spb.decode(m.topic, m.payload, time.time())  # a seq gap would raise seq_gap
    assert spb.is_stale("n1.d1") and spb.rebirths_requested == 0


def test_sparkplug_data_without_its_birth_is_refused_by_the_agent(tmp_path: Path) -> None:
    msgs = list(messages("sparkplug", _streams(), SIGNALS, group="g", node="n1"))
    spb = SparkplugDecoder(tmp_path / "c.json", lambda _g, _n: None)
    with pytest.raises(DecodeError) as exc:  # what the DBIRTH's aliases are for
        spb.decode(msgs[3].topic, msgs[3].payload, time.time())
    assert exc.value.reason == "unknown_alias"


def test_names_the_agent_would_refuse_are_listed() -> None:
    bad = [Stream("pump 1", np.zeros(1), np.zeros((1, 1))),
           Stream("alerts", np.zeros(1), np.zeros((1, 1)))]
    problems = name_problems("single", bad, ["ok"], site="s1")
    assert problems[0].startswith("asset 'pump 1' contains")
    assert "'alerts': forewarn/<site>/alerts/... are the agent's own output topics" in \
        problems[1]
    long = [Stream("x" * 61, np.zeros(1), np.zeros((1, 1)))]
    spb = name_problems("sparkplug", long, ["ok"], site="", group="g", node="n.1")
    assert any("node 'n.1' contains '.'" in p for p in spb)
    assert any("(node.asset, as the agent names it) is 65 characters long" in p for p in spb)
    assert name_problems("signal", _streams(), SIGNALS, site="s1") == []


def test_the_replay_command_offers_exactly_the_formats_and_subsets_that_exist() -> None:
    from trainer import cmapss, payloads, replay

    assert replay.FORMATS == payloads.FORMATS
    assert replay.SUBSETS == cmapss.SUBSETS
