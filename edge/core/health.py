"""What ``/healthz`` answers: ok, or not ok with the first reason that applies.

Not ok while the site-broker link is down, while the hot loop has not turned for
longer than the watchdog allows, or once readings were seen and none arrived for
``max_silence_s`` (0 turns the silence rule off). Before the first reading the
silence rule does not apply: an agent cannot know that a quiet site should be
sending, and an idle site with no configured expectation must not be flagged.
"""

from __future__ import annotations


def health(*, connected: bool, heartbeat_age_s: float, max_heartbeat_age_s: float,
           max_silence_s: float, last_reading_at: float | None,
           now: float, link_detail: str = "site broker link down") -> tuple[bool, str]:
    """``(ok, reason)``; ``last_reading_at`` and ``now`` on the same monotonic clock.
    ``link_detail`` is the reason while not ``connected`` (down, or a refused subscription)."""
    if not connected:
        return False, link_detail
    if heartbeat_age_s > max_heartbeat_age_s:
        return False, f"pipeline stalled for {heartbeat_age_s:.0f} s"
    if max_silence_s > 0 and last_reading_at is not None \
            and now - last_reading_at > max_silence_s:
        return False, (f"no readings for {now - last_reading_at:.0f} s "
                       f"(health.max_silence_s = {max_silence_s:g})")
    return True, "ok"
