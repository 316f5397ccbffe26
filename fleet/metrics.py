"""The fleet's Prometheus metrics: the service's own counters and a per-site/model view.

Label sets are bounded: ``site`` is an enrolled site id (only reports that
verified create one), ``model`` a model *name* (never a version or a sha, so a
rollout does not add series), ``kind`` and ``reason`` fixed vocabularies. The
per-site series come from the store at scrape time, at most
``max_sites`` sites (the rest are counted in ``forewarn_fleet_sites_not_exported``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleet.grid import SiteRow
from fleet.verify import REASONS

KINDS = ("drift", "health")


class FleetMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter("forewarn_fleet_reports_received_total",
                                "Reports received from the cloud broker", registry=r)
        self.stored = Counter("forewarn_fleet_reports_stored_total",
                              "Reports verified and stored, by kind", ["kind"], registry=r)
        self.duplicates = Counter("forewarn_fleet_reports_duplicate_total",
                                  "Reports already stored (redelivery), acknowledged again",
                                  registry=r)
        self.refused = Counter("forewarn_fleet_reports_refused_total",
                               "Reports refused and dead-lettered, by reason", ["reason"],
                               registry=r)
        self.store_errors = Counter("forewarn_fleet_store_errors_total",
                                    "Writes that failed (the report is not acknowledged)",
                                    registry=r)
        for k in KINDS:
            self.stored.labels(k)
        for reason in REASONS:
            self.refused.labels(reason)

    def add_grid(self, grid: Callable[[], list[SiteRow]], max_sites: int) -> None:
        self.registry.register(_GridCollector(grid, max_sites))


class _GridCollector(Collector):
    def __init__(self, grid: Callable[[], list[SiteRow]], max_sites: int,
                 cache_s: float = 5.0) -> None:
        self._grid, self._max, self._cache_s = grid, max_sites, cache_s
        self._lock = threading.Lock()
        self._at = -1e18
        self._rows: list[SiteRow] = []

    def _snapshot(self) -> list[SiteRow]:
        with self._lock:
            if time.monotonic() - self._at > self._cache_s:
                self._rows, self._at = self._grid(), time.monotonic()
            return self._rows

    def collect(self) -> Iterator[Metric]:
        rows = self._snapshot()
        shown = rows[: self._max]
        yield _g("forewarn_fleet_sites", "Sites that sent at least one report", len(rows))
        yield _g("forewarn_fleet_sites_stale", "Sites silent for longer than stale_after_s",
                 sum(r.stale for r in rows))
        yield _g("forewarn_fleet_sites_not_exported",
                 "Sites left out of the per-site series (max_sites_in_metrics)",
                 len(rows) - len(shown))
        age = GaugeMetricFamily("forewarn_fleet_report_age_seconds",
                                "Seconds since the site's last report", labels=["site"])
        gaps = GaugeMetricFamily("forewarn_fleet_sequence_gaps",
                                 "Report numbers never received from the site", labels=["site"])
        p99 = GaugeMetricFamily("forewarn_fleet_inference_p99_seconds",
                                "Inference p99 of the site's last health report",
                                labels=["site"])
        rate10 = GaugeMetricFamily("forewarn_fleet_alarms_per_10min",
                                   "Alarms per operator per 10 minutes (last 24 h)",
                                   labels=["site"])
        drift = GaugeMetricFamily("forewarn_fleet_drift_alarm",
                                  "1 when the model's latest drift report alarmed",
                                  labels=["site", "model"])
        recent = GaugeMetricFamily("forewarn_fleet_drift_alarms_recent",
                                   "Drift alarms in the model's last 3 drift reports",
                                   labels=["site", "model"])
        prec = GaugeMetricFamily("forewarn_fleet_precision",
                                 "Live precision (crew verdicts) of the site's alerts",
                                 labels=["site", "model"])
        arate = GaugeMetricFamily("forewarn_fleet_alert_rate",
                                  "Share of windows in alert in the latest drift interval",
                                  labels=["site", "model"])
        retrain = GaugeMetricFamily("forewarn_fleet_retrain_needed",
                                    "1 when drift or precision says the model needs retraining",
                                    labels=["site", "model"])
        for r in shown:
            age.add_metric([r.site_id], r.age_s)
            gaps.add_metric([r.site_id], r.gaps)
            if r.inference_p99_ms is not None:
                p99.add_metric([r.site_id], r.inference_p99_ms / 1000)
            if r.alarms_per_10min is not None:
                rate10.add_metric([r.site_id], r.alarms_per_10min)
            for c in r.cells:
                lab = [r.site_id, c.model]
                drift.add_metric(lab, float(c.drift_alarm))
                recent.add_metric(lab, c.drift_alarms_recent)
                retrain.add_metric(lab, float(c.retrain))
                if c.precision is not None:
                    prec.add_metric(lab, c.precision)
                if c.alert_rate is not None:
                    arate.add_metric(lab, c.alert_rate)
        yield from (age, gaps, p99, rate10, drift, recent, prec, arate, retrain)


def _g(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g
