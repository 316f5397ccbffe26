"""The gate's replays: a bundle over the gate period of every asset, as the agent runs it.

Rows go through the evaluation's bulk feed (:mod:`trainer.bulkfeed`: the agent's
range rule, WindowSet, Scorer and RuleMachine) with the bundle's deployed rule,
``RuleSpec.from_manifest`` with the agent config's overrides, exactly as the agent
builds it. The replay starts a little before the gate period (``warmup_s``) so the
first evaluated windows are full and the rule has its k of n history; windows
ending before the gate period are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from edge.alerts.rules import RuleSpec
from edge.core.config import AlertRuleConfig
from edge.models.bundle import Bundle, Manifest
from edge.models.infer import Scorer
from trainer.alertspans import AlertSpan, fault_intervals
from trainer.bulkfeed import Series, replay
from trainer.gate import Fault, Trace
from trainer.localhistory import AssetRows


def warmup_s(m: Manifest) -> float:
    """History replayed before the gate period: a window plus the rule's n hops."""
    policy_n = m.alert_policy.n if m.alert_policy is not None else 1
    return (m.window + policy_n * m.hop) * m.sample_period_s


def rule_of(bundle: Bundle, agent_alerts: AlertRuleConfig | None) -> RuleSpec:
    return RuleSpec.from_manifest(bundle.manifest, agent_alerts)


def traces(bundle: Bundle, spec: RuleSpec, rows: Iterable[AssetRows], gate_from: float
           ) -> dict[str, Trace]:
    """Each asset's evaluated windows, scores and alert state under ``spec``."""
    scorer = Scorer(bundle)
    series = [Series(r.asset, r.ts, r.values) for r in rows if len(r)]
    out: dict[str, Trace] = {}
    for res in replay(bundle, scorer, spec, series):
        keep = res.win_ts >= gate_from
        out[res.asset] = Trace(res.win_ts[keep], np.asarray(res.scores)[keep],
                               np.asarray(res.active)[keep],
                               [t for t in res.opened if t >= gate_from], spec.warning)
    return out


def faults(spans: Iterable[AlertSpan], rows: Iterable[AssetRows], margin_s: float,
           gate_from: float, gate_until: float) -> list[Fault]:
    """Confirmed faults (verdicts, labels) of every asset that overlap the gate period."""
    by_asset: dict[str, list[AlertSpan]] = {}
    for s in spans:
        by_asset.setdefault(s.asset, []).append(s)
    out: list[Fault] = []
    for r in rows:
        g = r.ts >= gate_from
        for lo, hi, src in fault_intervals(
                by_asset.get(r.asset, []), margin_s=margin_s, label_ts=r.ts[g],
                labels=None if r.label is None else r.label[g]):
            if hi >= gate_from and lo < gate_until:
                out.append(Fault(r.asset, lo, hi, src))
    return out
