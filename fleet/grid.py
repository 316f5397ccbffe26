"""The sites x models view: the latest figures of every site and model, and what stands out.

A cell is one (site, model name). *Retrain* stands out when the model's drift
alarmed in 2 of its last 3 drift reports (the appliance's own alarm rule,
seen from the fleet) or its live precision is below ``min_precision``;
*stale* when the site sent nothing for ``stale_after_s``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from fleet.store import ReportStore

MIN_PRECISION = 0.5


@dataclass
class Cell:
    site_id: str
    model: str  # model name (the sha's first 12 characters before a health report names it)
    version: str | None = None
    model_sha256: str = ""
    drift_alarm: bool = False  # latest drift report
    drift_alarms_recent: int = 0  # alarms in the last 3 drift reports
    drift_reports: int = 0
    alert_rate: float | None = None
    precision: float | None = None
    retrain: bool = False


@dataclass
class SiteRow:
    site_id: str
    reports: int
    last_seq: int
    gaps: int  # sequence numbers never received between the first and the last
    last_received: float
    age_s: float
    stale: bool
    agent_version: str | None = None
    inference_p99_ms: float | None = None
    alarms_per_10min: float | None = None
    alarms_per_day: float | None = None
    floods: int | None = None
    stale_alarms: int | None = None
    uptime_s: int | None = None
    cells: list[Cell] = field(default_factory=list)


def build_grid(store: ReportStore, now: float, stale_after_s: float,
               min_precision: float = MIN_PRECISION) -> list[SiteRow]:
    sites: dict[str, SiteRow] = {}
    for site, n, lo, hi, last in store.site_stats():
        age = max(0.0, now - last)
        sites[site] = SiteRow(site, n, hi, (hi - lo + 1) - n, last, round(age, 1),
                              age > stale_after_s)
    names: dict[tuple[str, str], tuple[str, str]] = {}  # (site, sha) -> (name, version)
    precision: dict[str, float | None] = {}
    for h in store.latest_health():
        row = sites.get(h.site_id)
        if row is None:
            continue
        b: dict[str, Any] = json.loads(h.body)
        row.agent_version = b.get("agent_version")
        row.inference_p99_ms = b.get("inference_p99_ms")
        row.uptime_s = b.get("uptime_s")
        a = b.get("alarm", {})
        row.alarms_per_10min, row.alarms_per_day = a.get("per_10min_avg"), a.get("per_day")
        row.floods, row.stale_alarms = a.get("floods"), a.get("stale")
        precision[h.site_id] = b.get("precision")
        for m in b.get("models", []):
            names[(h.site_id, m["model"])] = (m["name"], m["version"])
            row.cells.append(Cell(h.site_id, m["name"], m["version"], m["model"],
                                  precision=b.get("precision")))
    for d in store.recent_drift(3):
        row = sites.get(d.site_id)
        if row is None:
            continue
        name, version = names.get((d.site_id, d.model), (d.model[:12], None))
        cell = next((c for c in row.cells if c.model_sha256 == d.model), None)
        if cell is None:
            cell = Cell(d.site_id, name, version, d.model, precision=precision.get(d.site_id))
            row.cells.append(cell)
        body = json.loads(d.body)
        if cell.drift_reports == 0:  # newest first
            cell.drift_alarm = bool(body["alarm"])
            cell.alert_rate = float(body["alert_rate"])
        cell.drift_reports += 1
        cell.drift_alarms_recent += int(bool(body["alarm"]))
    for row in sites.values():
        for c in row.cells:
            c.retrain = c.drift_alarms_recent >= 2 or (
                c.precision is not None and c.precision < min_precision)
    return sorted(sites.values(), key=lambda r: r.site_id)


def grid_json(rows: list[SiteRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
