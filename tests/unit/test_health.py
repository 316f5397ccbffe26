from __future__ import annotations

from edge.core.health import health

OK = {"connected": True, "heartbeat_age_s": 0.1, "max_heartbeat_age_s": 20.0,
      "max_silence_s": 300.0, "last_reading_at": 1000.0, "now": 1100.0}


def test_healthy() -> None:
    assert health(**OK) == (True, "ok")


def test_each_reason_in_order() -> None:
    assert health(**{**OK, "connected": False, "heartbeat_age_s": 99.0}) == (
        False, "site broker link down")
    assert health(**{**OK, "heartbeat_age_s": 21.0}) == (False, "pipeline stalled for 21 s")
    ok, reason = health(**{**OK, "now": 1301.0})
    assert not ok and reason.startswith("no readings for 301 s")


def test_an_idle_site_that_never_sent_is_not_flagged() -> None:
    assert health(**{**OK, "last_reading_at": None, "now": 10**6}) == (True, "ok")


def test_silence_rule_off_with_zero() -> None:
    assert health(**{**OK, "max_silence_s": 0.0, "now": 10**6}) == (True, "ok")
