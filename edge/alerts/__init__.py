"""Alerts: pure rule machines, durable SQLite state, MQTT payloads, the manager."""

from __future__ import annotations

from edge.alerts.manager import AlertManager
from edge.alerts.payload import top_features
from edge.alerts.rules import RuleMachine, RuleSpec, Transition
from edge.alerts.store import Alert, AlertNotFound, AlertStateError, AlertStore

__all__ = ["Alert", "AlertManager", "AlertNotFound", "AlertStateError", "AlertStore",
           "RuleMachine", "RuleSpec", "Transition", "top_features"]
