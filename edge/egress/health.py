"""Allow-list schema of the periodic health report (the second payload that leaves the site).

Same discipline as the drift report (:mod:`edge.egress.schema`): unknown fields
are refused, scalars are rounded, and figures that summarise the process are
only sent over >= k windows or verdicts:

* ``inference_p50_ms``/``p99_ms`` only when >= k windows were scored, and
  ``precision`` only when >= k crew verdicts were given; otherwise null.
* Crew verdicts (:mod:`edge.egress.verdict_counts`): counts only, never a note
  or a work-order id. ``model_verdicts`` holds a model version only when it has
  >= k verdicts, ``verdicts`` (the site's) only when >= k in all (else null),
  and what is held back adds up to 0 or >= k, so no small group is had by
  subtraction; a precision needs >= k confirmed + false-alarm verdicts.
* Counts (windows, alerts by severity and state, errors, drops) are counts of
  the agent's own events, never readings; the alarm-system figures are rates of
  alert events (:mod:`edge.alerts.kpi`).
* Strings are identifiers chosen by central IT or the trainer (site id, model
  name/version from the bundle, agent version), each pattern-checked; asset and
  signal names are site data and never appear.
* Time: ``hour`` = agent clock in whole hours since the epoch, ``uptime_s`` in
  whole minutes' worth of seconds; no data timestamp.

``canary`` is the staged rollout: its current stage (``shadow``, ``canary_5``, ...;
null while none runs), the stages passed and the automatic rollbacks so far, counts
of the agent's own steps.
``schema_version`` 2 added ``verdicts.unsure`` and ``model_verdicts`` (and null
verdict counts); version 1 reports (older agents) are still accepted.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, model_validator

from edge.core.strict import StrictTyped
from edge.egress.schema import DEFAULT_K, refused

HEALTH_SCHEMA_VERSION = 2
_ID = r"^[A-Za-z0-9_.\-+]{1,64}$"


class ModelHealth(StrictTyped):
    group: int = Field(ge=0, le=100_000, description="asset group (index of the bundle)")
    name: str = Field(pattern=_ID)
    version: str = Field(pattern=_ID)
    model: str = Field(pattern=r"^[0-9a-f]{64}$", description="bundle model sha256")


class AlertCounts(StrictTyped):
    warning: int = Field(0, ge=0)
    critical: int = Field(0, ge=0)
    open: int = Field(0, ge=0)
    acknowledged: int = Field(0, ge=0)
    shelved: int = Field(0, ge=0)
    suppressed: int = Field(0, ge=0)
    resolved_24h: int = Field(0, ge=0)


class Verdicts(StrictTyped):
    """The site's crew verdicts on model alerts (last verdict per alert); null: < k."""

    confirmed: int | None = Field(None, ge=0)
    false_alarm: int | None = Field(None, ge=0)
    unsure: int | None = Field(None, ge=0, description="could not tell (schema 2)")

    def counts(self) -> list[int | None]:
        return [self.confirmed, self.false_alarm, self.unsure]


class ModelVerdicts(StrictTyped):
    """One model version's verdicts; sent only with >= k of them."""

    name: str = Field(pattern=_ID)
    version: str = Field(pattern=_ID)
    confirmed: int = Field(ge=0)
    false_alarm: int = Field(ge=0)
    unsure: int = Field(ge=0)
    precision: float | None = Field(None, ge=0, le=1)


class Canary(StrictTyped):
    """The candidate's staged rollout on this site."""

    stage: str | None = Field(None, pattern=r"^(shadow|canary_[0-9]{1,2}(_[0-9]{1,4})?)$")
    passed: int = Field(0, ge=0)
    failed: int = Field(0, ge=0)


class AlarmFigures(StrictTyped):
    operators: int = Field(ge=1, le=1000)
    per_10min_avg: float = Field(ge=0, le=1e6)
    per_10min_peak: float = Field(ge=0, le=1e6)
    per_day: float = Field(ge=0, le=1e7)
    floods: int = Field(ge=0)
    flood_s: float = Field(ge=0, le=1e9)
    chattering: int = Field(ge=0)
    stale: int = Field(ge=0)


class Errors(StrictTyped):
    decode: int = Field(0, ge=0)
    inference: int = Field(0, ge=0)
    dropped: int = Field(0, ge=0, description="readings and messages shed or dropped")
    egress_rejected: int = Field(0, ge=0)


class HealthReport(StrictTyped):
    schema_version: Literal[1, 2]
    site_id: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    hour: int = Field(ge=0, description="agent clock at send, hours since the epoch")
    agent_version: str = Field(pattern=_ID)
    uptime_s: int = Field(ge=0)
    models: list[ModelHealth] = Field(max_length=1000)
    windows_scored: int = Field(ge=0)
    alerts: AlertCounts
    verdicts: Verdicts = Verdicts()
    precision: float | None = Field(None, ge=0, le=1)
    model_verdicts: list[ModelVerdicts] = Field(default_factory=list, max_length=1000)
    inference_p50_ms: float | None = Field(None, ge=0, le=1e7)
    inference_p99_ms: float | None = Field(None, ge=0, le=1e7)
    errors: Errors
    canary: Canary = Canary()
    disk_free_ratio: float | None = Field(None, ge=0, le=1)
    alarm: AlarmFigures

    @model_validator(mode="after")
    def _k(self, info: ValidationInfo) -> HealthReport:
        k = int((info.context or {}).get("k", DEFAULT_K))
        if (self.inference_p50_ms is not None or self.inference_p99_ms is not None) \
                and self.windows_scored < k:
            raise ValueError(f"inference percentiles over windows_scored="
                             f"{self.windows_scored} < k={k}")
        v = self.verdicts
        judged = (v.confirmed or 0) + (v.false_alarm or 0)
        if self.precision is not None and judged < k:
            raise ValueError(f"precision over {judged} verdicts < k={k}")
        if self.schema_version == 1:
            if self.model_verdicts or v.unsure is not None:
                raise ValueError("verdicts.unsure and model_verdicts are schema_version 2 "
                                 "fields")
            return self
        counts = v.counts()
        if any(c is None for c in counts) and any(c is not None for c in counts):
            raise ValueError("verdicts: every count or none (null: fewer than k)")
        if counts[0] is not None and sum(c or 0 for c in counts) < k:
            raise ValueError(f"verdicts: {sum(c or 0 for c in counts)} in all < k={k}")
        for m in self.model_verdicts:
            n = m.confirmed + m.false_alarm + m.unsure
            if n < k:
                raise ValueError(f"model_verdicts {m.name}/{m.version}: {n} verdicts < k={k}")
            if m.precision is not None and m.confirmed + m.false_alarm < k:
                raise ValueError(f"model_verdicts {m.name}/{m.version}: precision over "
                                 f"{m.confirmed + m.false_alarm} verdicts < k={k}")
        shown = sum(m.confirmed + m.false_alarm + m.unsure for m in self.model_verdicts)
        if self.model_verdicts and (counts[0] is None
                                    or 0 < sum(c or 0 for c in counts) - shown < k):
            raise ValueError(f"model_verdicts: the site's other verdicts are fewer than "
                             f"k={k} (they could be had by subtraction)")
        return self


def validate_health(data: dict[str, Any], k: int = DEFAULT_K) -> HealthReport:
    """Validate against the allow-list; EgressError names what was refused."""
    try:
        return HealthReport.model_validate(data, context={"k": k})
    except ValidationError as exc:
        raise refused("health report", exc) from exc


def serialise_health(report: HealthReport) -> bytes:
    return json.dumps(report.model_dump(mode="json"), sort_keys=True,
                      separators=(",", ":"), allow_nan=False).encode()
