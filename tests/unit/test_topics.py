from __future__ import annotations

import pytest

from edge.core.errors import ConfigError
from edge.ingest.topics import TopicMap, TopicMatch

DEFAULT = ["forewarn/{site}/{asset}/{signal}", "forewarn/{site}/{asset}"]


def test_default_templates_map_signal_and_asset_topics() -> None:
    tm = TopicMap(DEFAULT, "s1")
    assert tm.subscriptions() == ["forewarn/s1/+/+", "forewarn/s1/+"]
    assert tm.match("forewarn/s1/press-4/temp") == TopicMatch("s1", "press-4", "temp")
    assert tm.match("forewarn/s1/press-4") == TopicMatch("s1", "press-4", None)


def test_other_site_and_other_shapes_do_not_match() -> None:
    tm = TopicMap(DEFAULT, "s1")
    assert tm.match("forewarn/s2/press-4/temp") is None
    assert tm.match("forewarn/s1/press-4/temp/extra") is None
    assert tm.match("forewarn/s1") is None
    assert tm.match("other/s1/press-4/temp") is None
    assert tm.match("") is None


def test_alerts_and_events_topics_are_never_readings() -> None:
    tm = TopicMap(DEFAULT, "s1")
    for topic in ["forewarn/s1/alerts/press-4", "forewarn/s1/events/press-4",
                  "forewarn/s1/alerts", "forewarn/s1/events"]:
        assert tm.match(topic) is None, topic
        assert tm.is_excluded(topic), topic
    assert not tm.is_excluded("forewarn/s1/press-4/temp")
    assert not tm.is_excluded("forewarn/s2/alerts/press-4")  # another site's, not ours


def test_custom_exclusions_replace_the_defaults() -> None:
    tm = TopicMap(["plant/{asset}/{signal}"], "s1", exclude=["plant/{asset}/alarm"])
    assert tm.match("plant/press-4/alarm") is None
    assert tm.match("plant/press-4/temp") == TopicMatch("s1", "press-4", "temp")


def test_plant_tree_template() -> None:
    tm = TopicMap(["plant/{asset}/sensors/{signal}"], "s1")
    assert tm.subscriptions() == ["plant/+/sensors/+"]
    assert tm.match("plant/press-4/sensors/temp") == TopicMatch("s1", "press-4", "temp")
    assert tm.match("plant/press-4/actuators/temp") is None


def test_sparkplug_and_broker_topics_are_excluded_even_if_a_template_fits() -> None:
    tm = TopicMap(["{asset}/{signal}", "{asset}/{signal}/x/y/z"], "s1")
    assert tm.match("pump/temp") == TopicMatch("s1", "pump", "temp")
    assert tm.match("spBv1.0/g1/NDATA/n1/d1") is None
    assert tm.match("$SYS/broker") is None


@pytest.mark.parametrize("bad", ["pump 1", ".hidden", "a" * 65, "pump\n", "ü", "-x"])
def test_unsafe_names_do_not_match(bad: str) -> None:
    tm = TopicMap(DEFAULT, "s1")
    assert tm.match(f"forewarn/s1/{bad}/temp") is None
    assert tm.match(f"forewarn/s1/press/{bad}") is None


def test_first_matching_template_wins_and_falls_through_on_bad_names() -> None:
    tm = TopicMap(["plant/{asset}/{signal}", "plant/{signal}/{asset}"], "s1")
    assert tm.match("plant/a/b") == TopicMatch("s1", "a", "b")
    # the first template rejects "a b" as an asset; the second reads it differently
    # but "a b" is then the signal, still unsafe: no match at all
    assert tm.match("plant/a b/c") is None


@pytest.mark.parametrize("template", [
    "forewarn/{site}/{signal}",           # no asset
    "forewarn/{asset}/{asset}",           # two assets
    "forewarn/x{asset}/{signal}",         # partial level
    "forewarn/+/{asset}",                 # wildcard
    "forewarn/#",
])
def test_bad_templates_are_config_errors(template: str) -> None:
    with pytest.raises(ConfigError, match="template"):
        TopicMap([template], "s1")


def test_bad_site_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="site"):
        TopicMap(DEFAULT, "s 1")


def test_cache_is_bounded_and_answers_stay_correct() -> None:
    tm = TopicMap(DEFAULT, "s1", cache_size=16)
    for i in range(200):
        assert tm.match(f"forewarn/s1/a{i}/temp") == TopicMatch("s1", f"a{i}", "temp")
    info = tm.match.cache_info()  # type: ignore[attr-defined]
    assert info.currsize <= 16
    assert tm.match("forewarn/s1/a0/temp") == TopicMatch("s1", "a0", "temp")
    tm.match("forewarn/s1/a0/temp")
    assert tm.match.cache_info().hits >= 1  # type: ignore[attr-defined]
