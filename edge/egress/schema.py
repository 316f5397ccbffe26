"""Allow-list schema of the drift report, the only payload that leaves the site.

Decisions (for the data-protection officer):

* Only scalars over >= k windows: PSI, KS, mean shift (reference std units), the
  PSI threshold and alarm per feature and for the score, missing-data and alert
  rates, window counts. Never min/max, bin edges (quantiles of process data),
  raw values, raw timestamps, or strings taken from the site's data.
* Features are keyed by their **index** in the bundle's feature list; central IT
  maps indexes to names with the bundle it shipped. Feature and asset names are
  site data and are not sent.
* Time: interval sequence numbers plus ``hour`` = agent clock at closing, in whole
  hours since the epoch (``int(t // 3600)``), never a data timestamp.
* ``site_id`` is an opaque configured id; ``model`` is the bundle's model sha256.
* Per-bin counts (no edges) are opt-in; adjacent bins are merged until every group
  holds >= k windows, and bins are only sent when they add up to exactly the
  window count (so no small remainder can be derived by subtraction).
* Scalars are rounded to 4 decimals: plenty for monitoring, no float bit patterns.

Unknown fields are rejected (``extra="forbid"``); k is checked at validation via
the validation context ``{"k": k}``.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge.core.errors import EgressError
from edge.core.strict import StrictTyped
from edge.drift.monitor import DriftInterval, FeatureDrift

SCHEMA_VERSION = 1
DEFAULT_K = 20
DECIMALS = 4


def _k(info: ValidationInfo) -> int:
    ctx = info.context or {}
    return int(ctx.get("k", DEFAULT_K))


class BinGroup(StrictTyped):
    width: int = Field(ge=1, le=10_000, description="adjacent reference bins merged")
    count: int = Field(ge=0)


class FeatureScalars(StrictTyped):
    i: int = Field(ge=0, le=100_000, description="feature index in the bundle")
    psi: float | None = Field(ge=0, le=1e6)
    ks: float | None = Field(ge=0, le=1)
    ms: float | None = Field(ge=-1e6, le=1e6, description="mean shift, reference std units")
    th: float = Field(ge=0, le=1e6, description="PSI alarm threshold")
    alarm: bool
    bins: list[BinGroup] | None = Field(None, max_length=10_000)

    @field_validator("psi", "ks", "ms", "th")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be finite")
        return v

    @field_validator("bins")
    @classmethod
    def _k_bins(cls, v: list[BinGroup] | None, info: ValidationInfo) -> list[BinGroup] | None:
        k = _k(info)
        if v is not None and any(b.count < k for b in v):
            raise ValueError(f"every bin group must hold >= k={k} windows")
        return v


class DriftReport(StrictTyped):
    schema_version: Literal[1]
    site_id: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    model: str = Field(pattern=r"^[0-9a-f]{64}$", description="bundle model sha256")
    group: int = Field(ge=0, le=100_000)
    interval_first: int = Field(ge=0)
    interval_last: int = Field(ge=0)
    intervals: int = Field(ge=1, description="intervals pooled (outbox merges)")
    hour: int = Field(ge=0, description="agent clock at close, hours since the epoch")
    windows: int = Field(ge=1)
    missing_rate: float = Field(ge=0, le=1)
    alert_rate: float = Field(ge=0, le=1)
    alarm: bool
    features: list[FeatureScalars] = Field(max_length=100_000)
    score: FeatureScalars | None = None

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> DriftReport:
        k = _k(info)
        if self.windows < k:
            raise ValueError(f"windows={self.windows} below k={k}")
        if self.interval_last < self.interval_first:
            raise ValueError("interval_last before interval_first")
        for f in [*self.features, *([self.score] if self.score else [])]:
            if f.bins is not None and sum(b.count for b in f.bins) != self.windows:
                raise ValueError(f"feature {f.i}: bins do not add up to windows")
        return self


def validate(data: dict[str, Any], k: int = DEFAULT_K) -> DriftReport:
    """Validate against the allow-list; EgressError names what was refused."""
    try:
        return DriftReport.model_validate(data, context={"k": k})
    except ValidationError as exc:
        raise refused("drift report", exc) from exc


def refused(what: str, exc: ValidationError) -> EgressError:
    """The allow-list's refusal, naming the first fields at fault."""
    errs = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or '(root)'}: {e['msg']}"
                     for e in exc.errors()[:5])
    return EgressError(f"{what} refused by the egress schema: {errs}")


def serialise(report: DriftReport) -> bytes:
    """Canonical JSON: sorted keys, no spaces, no NaN."""
    return json.dumps(report.model_dump(mode="json", exclude_none=True), sort_keys=True,
                      separators=(",", ":"), allow_nan=False).encode()


def parse(payload: bytes, k: int = DEFAULT_K) -> DriftReport:
    try:
        return validate(json.loads(payload), k)
    except ValueError as exc:
        raise EgressError(f"drift report is not JSON ({exc})") from exc


def merge_bins(counts: tuple[int, ...] | list[int], k: int) -> list[BinGroup]:
    """Merge adjacent bins left to right until each group holds >= k.

    >>> [(b.width, b.count) for b in merge_bins([30, 5, 10, 40, 3], 20)]
    [(1, 30), (4, 58)]
    """
    groups: list[list[int]] = []
    w = c = 0
    for n in counts:
        w, c = w + 1, c + int(n)
        if c >= k:
            groups.append([w, c])
            w = c = 0
    if w:
        if groups:
            groups[-1][0] += w
            groups[-1][1] += c
        else:
            groups.append([w, c])
    return [BinGroup(width=a, count=b) for a, b in groups]


def _r(x: float) -> float | None:
    return None if not math.isfinite(x) else round(float(x), DECIMALS) + 0.0


def _feature(f: FeatureDrift, index: int, windows: int, k: int, bins: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"i": index, "psi": _r(f.psi), "ks": _r(f.ks), "ms": _r(f.mean_shift),
                           "th": round(f.threshold, DECIMALS), "alarm": bool(f.alarm)}
    if bins and sum(f.counts) == windows:
        out["bins"] = [b.model_dump() for b in merge_bins(f.counts, k)]
    return out


def report_dict(interval: DriftInterval, site_id: str, k: int = DEFAULT_K,
                include_bins: bool = False) -> dict[str, Any]:
    """The allow-listed fields of an interval, before validation."""
    n = interval.windows
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "site_id": site_id,
        "model": interval.model_sha256, "group": interval.group,
        "interval_first": interval.index, "interval_last": interval.index, "intervals": 1,
        "hour": int(interval.closed_at // 3600), "windows": n,
        "missing_rate": round(min(max(interval.missing_rate, 0.0), 1.0), DECIMALS),
        "alert_rate": round(interval.alert_rate, DECIMALS), "alarm": bool(interval.alarm),
        "features": [_feature(f, f.index, n, k, include_bins) for f in interval.features],
    }
    if interval.score is not None:
        data["score"] = _feature(interval.score, 0, n, k, include_bins)
    return data


def build_report(interval: DriftInterval, cfg: Any) -> bytes | None:
    """Validated canonical JSON for ``interval``, or None when suppressed (< k windows).

    ``cfg`` is an :class:`edge.core.config.EgressConfig` (site_id, k, include_bins).
    """
    if interval.windows < cfg.k:
        return None
    return serialise(validate(report_dict(interval, cfg.site_id, cfg.k, cfg.include_bins),
                              cfg.k))


def merge_reports(a: DriftReport, b: DriftReport, k: int = DEFAULT_K) -> DriftReport:
    """Pool two consecutive reports into one (outbox overflow).

    Windows, intervals add up; scalars become window-weighted means (an
    approximation for PSI/KS, exact for the rates and mean shift); alarms OR;
    bins add when both have the same grouping, otherwise they are left out.
    """
    if (a.site_id, a.model, a.group) != (b.site_id, b.model, b.group) or \
            [f.i for f in a.features] != [f.i for f in b.features]:
        raise EgressError("cannot merge drift reports of different site/model/group/features")
    wa, wb = a.windows, b.windows

    def mean(x: float | None, y: float | None) -> float | None:
        if x is None or y is None:
            return x if y is None else y
        return round((x * wa + y * wb) / (wa + wb), DECIMALS)

    def feat(x: FeatureScalars, y: FeatureScalars) -> dict[str, Any]:
        bins = None
        if x.bins and y.bins and [g.width for g in x.bins] == [g.width for g in y.bins]:
            bins = [{"width": g.width, "count": g.count + h.count}
                    for g, h in zip(x.bins, y.bins, strict=True)]
        return {"i": x.i, "psi": mean(x.psi, y.psi), "ks": mean(x.ks, y.ks),
                "ms": mean(x.ms, y.ms), "th": mean(x.th, y.th), "alarm": x.alarm or y.alarm,
                "bins": bins}

    first = a if a.interval_first <= b.interval_first else b
    data = {
        "schema_version": SCHEMA_VERSION, "site_id": a.site_id, "model": a.model,
        "group": a.group, "interval_first": first.interval_first,
        "interval_last": max(a.interval_last, b.interval_last),
        "intervals": a.intervals + b.intervals, "hour": max(a.hour, b.hour),
        "windows": wa + wb, "missing_rate": mean(a.missing_rate, b.missing_rate),
        "alert_rate": mean(a.alert_rate, b.alert_rate), "alarm": a.alarm or b.alarm,
        "features": [feat(x, y) for x, y in zip(a.features, b.features, strict=True)],
        "score": feat(a.score, b.score) if a.score and b.score else None,
    }
    return validate(data, k)


def merge_payloads(older: bytes, newer: bytes, k: int = DEFAULT_K) -> bytes:
    return serialise(merge_reports(parse(older, k), parse(newer, k), k))
