"""The one name rule (edge/core/names.py) and where it is applied: config, topics, publishing."""

from __future__ import annotations

import logging

import pytest

from edge.core.config import parse_config
from edge.core.errors import ConfigError, DecodeError
from edge.core.names import is_safe_name, name_problem, topic_problem
from edge.ingest.publish_guard import PublishGuard
from edge.ingest.router import Router
from edge.ingest.topics import TopicMap

UNSAFE = {
    "x\x00y": "control character (U+0000)", "a\nb": "control character (U+000A)",
    "a\x7fb": "control character (U+007F)", "a\u202eb": "control character (U+202E)",
    "+": "wildcard '+'", "a#": "wildcard '#'", "a/b": "'/'", "<b>": "character '<'",
    "a b": "character ' '", "$SYS": "character '$'", "": "is empty",
    "-a": "start with a letter or digit", ".a": "start with a letter or digit",
    "a" * 65: "65 characters", "a\n": "control character",
}


@pytest.mark.parametrize(("name", "problem"), UNSAFE.items())
def test_unsafe_names_are_refused_with_what_is_wrong(name: str, problem: str) -> None:
    assert not is_safe_name(name)
    got = name_problem(name)
    assert got is not None and problem in got, got


@pytest.mark.parametrize("name", ["press-4", "Pump_1.motor", "a", "9" * 64, "site1"])
def test_safe_names_pass(name: str) -> None:
    assert is_safe_name(name) and name_problem(name) is None


@pytest.mark.parametrize(("topic", "problem"), [
    ("forewarn/s1/alerts/x\x00y", "U+0000"), ("forewarn/s1/alerts/a+b", "'+'"),
    ("forewarn/s1/alerts/#", "'#'"), ("a\udc80", "UTF-8"), ("", "empty"),
    ("t/" + "x" * 70_000, "bytes long"),
])
def test_topics_the_broker_would_refuse(topic: str, problem: str) -> None:
    got = topic_problem(topic)
    assert got is not None and problem in got, got


def test_publishable_topics() -> None:
    for t in ("forewarn/s1/alerts/press-4", "spBv1.0/plant/NCMD/gw1", "a/b/c"):
        assert topic_problem(t) is None


@pytest.mark.parametrize(("section", "raw", "key", "problem"), [
    ({}, {"site": "s\x00"}, "site", "control character"),
    ({}, {"site": "a/b"}, "site", "'/'"),
    ({"mqtt": {"topics": ["plant/+/{asset}"]}}, {}, "mqtt.topics.0", "wildcard '+'"),
    ({"mqtt": {"topics": ["plant/x{asset}"]}}, {}, "mqtt.topics.0", "whole level"),
    ({"mqtt": {"alerts_topic": "f/{site}/al\x00/{asset}"}}, {}, "mqtt.alerts_topic",
     "control character"),
    ({"alerts": {"state_signal": "st ate"}}, {}, "alerts.state_signal", "character ' '"),
    ({"bundle": {"name": "m#1"}}, {}, "bundle.name", "wildcard '#'"),
])
def test_config_errors_name_key_value_and_problem(section: dict[str, object],
                                                  raw: dict[str, object], key: str,
                                                  problem: str) -> None:
    doc: dict[str, object] = {"bundle": {"path": "b"}, **section, **raw}
    with pytest.raises(ConfigError) as ei:
        parse_config(doc)
    line = next(ln for ln in str(ei.value).splitlines() if ln.strip().startswith(key + " "))
    assert "→" in line and problem in line, line


def test_ingest_topic_with_an_unsafe_level_is_bad_name_not_unknown() -> None:
    r = Router(TopicMap(["forewarn/{site}/{asset}/{signal}"], "s1"), 1000)
    for topic, level in [("forewarn/s1/a b/temp", "asset"), ("forewarn/s1/p1/<i>", "signal")]:
        with pytest.raises(DecodeError) as ei:
            r.decode(topic, b'{"ts": 1, "value": 1}', 1.0)
        assert ei.value.reason == "bad_name" and level in ei.value.detail
    with pytest.raises(DecodeError) as ei:
        r.decode("other/s1/p1/temp", b"1", 1.0)
    assert ei.value.reason == "unknown_topic"


def test_publish_guard_quarantines_a_bad_topic_logs_once_counts_every_time(
        caplog: pytest.LogCaptureFixture) -> None:
    refused: list[int] = []
    g = PublishGuard(on_refused=lambda: refused.append(1))
    caplog.set_level(logging.ERROR)
    assert g.allow("forewarn/s1/alerts/ok")
    for _ in range(3):
        assert not g.allow("forewarn/s1/alerts/x\x00y")
    assert not g.allow("forewarn/s1/alerts/a+b")
    assert len(refused) == 4 and g.refused_total == 4
    assert len([r for r in caplog.records if "quarantined" in r.getMessage()]) == 2
    assert set(g.quarantined()) == {"forewarn/s1/alerts/x\x00y", "forewarn/s1/alerts/a+b"}


def test_publish_guard_checks_a_good_topic_once_and_a_bad_one_every_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.ingest import publish_guard

    checked: list[str] = []

    def counting(topic: str) -> str | None:
        checked.append(topic)
        return topic_problem(topic)

    monkeypatch.setattr(publish_guard, "topic_problem", counting)
    monkeypatch.setattr(publish_guard, "MAX_REMEMBERED", 2)
    g = PublishGuard()
    for _ in range(3):
        assert g.allow("forewarn/s1/events/a")
        assert g.allow("forewarn/s1/alerts/a")
        assert not g.allow("forewarn/s1/alerts/a+b")  # refused each time, checked once
    assert checked == ["forewarn/s1/events/a", "forewarn/s1/alerts/a",
                       "forewarn/s1/alerts/a+b"]
    # Past the bound a good topic is still allowed, checked at every publish.
    assert g.allow("forewarn/s1/events/b") and g.allow("forewarn/s1/events/b")
    assert checked[3:] == ["forewarn/s1/events/b"] * 2
    assert g.refused_total == 3
