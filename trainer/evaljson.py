"""``forewarn evaluate --json``: the figures, the alert rule and every alert event as JSON.

The events use the agent's vocabulary (``forewarn.alert-event/1`` in
:mod:`edge.alerts.payload`): ``opened``, ``escalated``, ``auto_cleared``, each with
its severity, the end time of the window that caused it (``data_ts``) and that
window's score. Replaying a bundle's data live into an agent publishes the same
events at the same ``data_ts`` (tests/integration/test_policy_equality.py), so
this file is what the deployed bundle will do on that data.

Shape::

    {"schema": "forewarn.evaluation/1", "command": "...", "data": "...",
     "kind": "rul" | "anomaly", "scored_by": "...", "protocol": "...",
     "alert_rule": {"text": "...", "warning": 30.0, "k": 2, ...},
     "metrics": {"test_rmse": {"value": 17.1, "protocol": "..."}, ...},
     "notes": ["..."],
     "assets": [{"asset": "engine-001", "windows": 162,
                 "events": [{"event": "opened", "severity": "warning",
                             "data_ts": 150.0, "score": 28.7}, ...]}, ...]}

Non-finite figures are ``null`` (JSON has no NaN).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.alerts.rules import Transition
    from trainer.evaluate import Evaluation

SCHEMA = "forewarn.evaluation/1"
# The agent's event names for the rule machine's transitions (edge.alerts.manager).
AGENT_EVENT = {"opened": "opened", "escalated": "escalated", "cleared": "auto_cleared"}


def _number(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def event_json(t: Transition) -> dict[str, Any]:
    """One transition as the agent names it.

    >>> from edge.alerts.rules import Transition
    >>> event_json(Transition("cleared", "warning", 12.0, 41.5))
    {'event': 'auto_cleared', 'severity': 'warning', 'data_ts': 12.0, 'score': 41.5}
    """
    return {"event": AGENT_EVENT[t.kind], "severity": t.severity, "data_ts": t.ts,
            "score": _number(t.score)}


def evaluation_json(ev: Evaluation, data_note: str = "") -> dict[str, Any]:
    return {
        "schema": SCHEMA, "command": ev.command, "data": data_note, "kind": ev.kind,
        "scored_by": ev.scored_by, "protocol": ev.protocol,
        "alert_rule": {"text": ev.rule_text, **ev.rule},
        "metrics": {k: {"value": _number(v), "protocol": ev.protocol_of(k)}
                    for k, v in ev.metrics.items()},
        "notes": list(ev.notes),
        "assets": [{"asset": a.asset, "windows": len(a.win_ts),
                    "events": [event_json(t) for t in a.events]} for a in ev.assets],
    }


def write_json(ev: Evaluation, path: Path, data_note: str = "") -> None:
    Path(path).write_text(json.dumps(evaluation_json(ev, data_note), indent=1,
                                     allow_nan=False) + "\n", encoding="utf-8")
