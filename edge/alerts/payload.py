"""What an alert carries (its explanation) and the JSON the agent publishes about it.

Andon lights and SCADA subscribe to these payloads.

Two topics per asset, both UTF-8 JSON objects, QoS as configured for the agent:

``forewarn/<site>/alerts/<asset>`` — **retained current state** (one message per
change; a subscriber that connects later gets the latest at once)::

    {
      "schema": "forewarn.alert-state/1",
      "site": "site1",
      "asset": "engine-7",
      "state": "normal" | "open" | "acknowledged" | "shelved" | "suppressed",
      "severity": "none" | "warning" | "critical",
      "maintenance": false,          # asset in a maintenance window (alerts suppressed)
      "alert_id": 12 | null,         # the unresolved alert shown, null when "normal"
      "kind": "model" | "limit" | "sensor_fault" | null,  # what raised it (below)
      "condition": "rul" | "limit:s4" | null,  # model: manifest output.kind; else kind:signal
      "detail": {} | {...},          # limit / sensor_fault: what was seen (below)
      "since": 1732360000.0 | null,  # epoch s the alert opened (agent clock)
      "updated": 1732360100.0,       # epoch s of this state change
      "score": 17.2 | null,          # score at the last change
      "peak_score": 12.9 | null,     # worst score seen while the alert is unresolved
      "top_signals": ["s11", "s4"],  # signals to check first
      "top_features": [{"feature": "s11.mean", "signal": "s11", "deviation": 4.1,
                        "reading": 48.1, "unit": "psia",  # signal's last value in the window
                        "normal_low": 47.1, "normal_high": 48.0,  # its normal band
                        "band": "training range"}],
      "ack_by": "ana" | null, "ack_ts": 1732360050.0 | null,
      "shelved_until": null | 1732363600.0,
      "model": "cmapss-rul/1"
    }

When an asset has more than one unresolved alert (several conditions), the state
shows the most severe one (then the oldest). ``state`` is ``"normal"`` when none
is unresolved.

``kind`` — what raised the alert:

* ``"model"`` — the model's score breached its levels (``score`` is the score).
* ``"limit"`` — a reading outside the **training range** of its signal (what the
  model has seen, see ``edge.models.bundle.SignalSpec``): the model's output is then an
  extrapolation. One alert per asset and signal; it clears itself after a few
  readings back inside the limits and a small deadband. ``score`` is the latest
  value, ``peak_score`` the worst.
* ``"sensor_fault"`` — a physically impossible reading (outside the signal's
  plausibility bound) or no number at all (NaN/Inf): data quality, the value
  never reached the model.

``detail`` of a limit or sensor-fault alert (``{}`` for model alerts)::

    {"signal": "s4", "unit": "psia",
     "bound": "training_max" | "training_min" | "plausible",
     "limit": 1471.2 | null,          # the alarm limit passed (null: sensor fault)
     "value": 1853.0, "worst": 1871.4,  # latest and worst reading while active
     "ts": 1732360100.0,              # data timestamp of the latest reading
     "since_ts": 1732360000.0,        # data timestamp of the first bad reading
     "reason": "implausible" | "non_finite",  # sensor_fault only: a number, or none (NaN/Inf)
     "value_text": "NaN (no number)",  # only when value / worst is null for a NaN:
     "worst_text": "NaN (no number)"}  # JSON has no NaN, so it is said in words

``forewarn/<site>/events/<asset>`` — **one non-retained event per change**::

    {
      "schema": "forewarn.alert-event/1",
      "site": "site1", "asset": "engine-7", "alert_id": 12, "condition": "rul",
      "kind": "model" | "limit" | "sensor_fault", "detail": {...},  # as above
      "event": "opened" | "escalated" | "acknowledged" | "resolved" | "auto_cleared"
             | "shelved" | "unshelved" | "suppressed" | "unsuppressed"
             | "verdict",              # a verdict given or amended after resolution
      "verdict": "confirmed" | "false_alarm" | "unsure" | null,  # the alert's last verdict
      "state": "open" | "acknowledged" | "resolved" | "shelved" | "suppressed",
      "severity": "warning" | "critical",
      "ts": 1732360000.0,            # epoch s of the change (agent clock)
      "data_ts": 1732359990.0 | null,  # timestamp of the window that caused it
      "who": "ana" | "auto" | null, "note": "bearing noise, greased" | null,
      "score": 17.2 | null,
      "top_features": [...]          # as above
    }

A person resolves with a verdict (:mod:`edge.alerts.verdicts`): the ``resolved``
event carries it, and a later amendment is a ``verdict`` event. The work-order id
stays in the alert store and the API; no MQTT message carries it.

``reading`` / ``unit`` / ``normal_low`` / ``normal_high`` / ``band`` are present
when the feature maps to a signal (``band`` says where the band comes from:
``"training range"`` or ``"accepted range"``, see :mod:`edge.alerts.bands`);
``reading`` is null when the window is not at hand. Other fields (``kind``,
``value`` …) may come with an alert's details and are passed through.

Asset names, notes and feature names are data: consumers must escape them.
Fields are only ever added within a schema version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from edge.alerts.store import Alert

STATE_SCHEMA = "forewarn.alert-state/1"
EVENT_SCHEMA = "forewarn.alert-event/1"
_RANK = {"critical": 0, "warning": 1}
_SEPARATORS = "._-:/[ "


def top_features(deviations: Any, names: Sequence[str], signals: Sequence[str],
                 n: int = 3) -> list[dict[str, Any]]:
    """The ``n`` features furthest from their reference, in reference std units."""
    if deviations is None:
        return []
    arr = np.asarray(deviations, dtype=np.float64).ravel()
    mag = np.where(np.isfinite(arr), np.abs(arr), -1.0)
    out = []
    for i in np.argsort(-mag, kind="stable")[:n]:
        if mag[i] < 0:
            break
        name = names[i] if i < len(names) else f"feature_{i}"
        out.append({"feature": name, "signal": signal_of(name, signals),
                    "deviation": round(float(arr[i]), 3)})
    return out


def signal_of(feature: str, signals: Sequence[str]) -> str | None:
    """The signal a feature is computed from, by name prefix (``s11.mean`` -> ``s11``)."""
    best = None
    for s in signals:
        if (feature == s or (feature.startswith(s) and feature[len(s)] in _SEPARATORS)) and (
                best is None or len(s) > len(best)):
            best = s
    return best


def worst(alerts: list[Alert]) -> Alert | None:
    """The unresolved alert an andon light should show: most severe, then oldest."""
    live = [a for a in alerts if a.state != "resolved"]
    return min(live, key=lambda a: (_RANK.get(a.severity, 9), a.opened_ts)) if live else None


def state_payload(site: str, asset: str, alerts: list[Alert], *, maintenance: bool,
                  now: float, model: str = "") -> dict[str, Any]:
    a = worst(alerts)
    if a is None:
        return {"schema": STATE_SCHEMA, "site": site, "asset": asset, "state": "normal",
                "severity": "none", "maintenance": maintenance, "alert_id": None,
                "kind": None, "condition": None, "detail": {}, "since": None, "updated": now,
                "score": None,
                "peak_score": None, "top_signals": [], "top_features": [], "ack_by": None,
                "ack_ts": None, "shelved_until": None, "model": model}
    return {"schema": STATE_SCHEMA, "site": site, "asset": asset, "state": a.state,
            "severity": a.severity, "maintenance": maintenance, "alert_id": a.id,
            "kind": a.kind, "condition": a.condition, "detail": a.detail,
            "since": a.opened_ts, "updated": now, "score": a.score,
            "peak_score": a.peak_score, "top_signals": a.top_signals,
            "top_features": a.top_features, "ack_by": a.ack_by, "ack_ts": a.ack_ts,
            "shelved_until": a.shelved_until, "model": a.model or model}


def event_payload(site: str, alert: Alert, event: str, *, ts: float, who: str | None = None,
                  note: str | None = None) -> dict[str, Any]:
    return {"schema": EVENT_SCHEMA, "site": site, "asset": alert.asset, "alert_id": alert.id,
            "condition": alert.condition, "kind": alert.kind, "detail": alert.detail,
            "event": event, "state": alert.state,
            "severity": alert.severity, "ts": ts, "data_ts": alert.data_ts, "who": who,
            "note": note, "score": alert.score, "top_features": alert.top_features,
            "verdict": alert.verdict}


def encode(payload: dict[str, Any]) -> bytes:
    # Non-finite floats cannot be JSON; orjson would write null, which is what we want.
    return orjson.dumps(payload)
