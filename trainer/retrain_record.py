"""What a retrain run writes down: the candidate's lineage and gate figures, the report's
context lines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge.models.bundle import Bundle
from trainer.alertspans import AlertSpan
from trainer.gate import GateResult, iso
from trainer.refit import TrainingSet

if TYPE_CHECKING:
    from trainer.retrain import Plan


def lineage_of(active: Bundle, plan: Plan, training: TrainingSet, spans: list[AlertSpan],
               margin: float, periods: tuple[float, float, float]) -> dict[str, Any]:
    verdicts: dict[str, int] = {}
    for s in spans:
        verdicts[s.verdict or "none"] = verdicts.get(s.verdict or "none", 0) + 1
    t0, g0, g1 = periods
    return {
        "dataset": "history", "parent": active.ident,
        "parent_model_sha256": active.manifest.model_sha256,
        "split": f"{training.windows} windows of {len(training.assets)} assets in "
                 f"[{iso(t0)}, {iso(g0)}) fit (every {training.stride}); "
                 f"[{iso(g0)}, {iso(g1)}) held back for the replay gate",
        "retrain": {"trigger": plan.trigger, "actor": plan.actor, "train": [t0, g0],
                    "gate": [g0, g1], "fault_margin_s": margin, "unjudged": plan.unjudged,
                    "label_signal": plan.label_signal, "rows": training.rows,
                    "assets": training.assets, "skipped": training.skipped,
                    "alert_spans_by_verdict": verdicts},
    }


def record_gate(fields: dict[str, Any], r: GateResult) -> None:
    """The gate's figures in the candidate's manifest (metrics and lineage)."""
    a, c, n = r.active, r.candidate, len(r.faults)
    fields["metrics"].update({
        "gate_windows": float(c.windows), "gate_healthy_windows": float(c.healthy),
        "gate_false_alarm_windows": float(c.false_alarm_windows),
        "gate_false_alarm_rate": c.false_alarm_rate,
        "gate_active_false_alarm_rate": a.false_alarm_rate,
        "gate_faults": float(n), "gate_faults_caught": float(len(c.caught))})
    if n and c.window_precision is not None:
        # The figure the agent shows beside live precision: here measured on held-back
        # local rows whose faults the crew confirmed.
        fields["metrics"]["test_window_precision"] = c.window_precision
    fields["lineage"]["retrain"]["gate"] = {
        "accepted": r.accepted, "active": a.to_dict(n), "candidate": c.to_dict(n)}


def report_context(plan: Plan, active: Bundle, cand: Bundle, training: TrainingSet,
                   figures: dict[str, Any]) -> dict[str, Any]:
    g0, g1 = figures["gate"]
    t0 = figures["train"][0]
    out = {"active": active.ident, "candidate": cand.ident, "trigger": plan.trigger,
           "by": plan.actor, "training period (data time)": f"{iso(t0)} .. {iso(g0)}",
           "gate period (held back)": f"{iso(g0)} .. {iso(g1)}",
           "fault margin": f"{figures['fault_margin_s']:g} s",
           "alert spans without a verdict": plan.unjudged}
    if plan.candidate is None:
        out["training rows by class"] = ", ".join(f"{k} {v}" for k, v in training.rows.items())
        out["training windows"] = f"{training.windows} (every {training.stride})"
        if training.skipped:
            out["assets left out"] = "; ".join(f"{a}: {w}" for a, w in training.skipped.items())
    else:
        out["candidate from"] = str(plan.candidate)
    return out
