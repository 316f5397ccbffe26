"""The periodic health report: the agent's figures -> allow-list schema -> sealed -> outbox.

Every figure is cumulative since the agent started (like a Prometheus counter;
``uptime_s`` tells the fleet about restarts), so a report merged or lost on the
way costs resolution, not correctness. Alert and verdict counts are the current
state of the store (verdicts: :mod:`edge.egress.verdict_counts`); the
alarm-system figures cover the last 24 h (:mod:`edge.alerts.kpi`).
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from edge import __version__
from edge.alerts.kpi import alarm_kpis
from edge.core.errors import EgressError, ForewarnError, StorageError
from edge.egress.health import HEALTH_SCHEMA_VERSION, serialise_health, validate_health
from edge.egress.verdict_counts import verdict_section

log = logging.getLogger(__name__)
DAY_S = 86_400.0


@dataclass(frozen=True)
class ModelRef:
    group: int
    name: str
    version: str
    model_sha256: str


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Quantile from cumulative (upper bound, count) buckets, linear inside a bucket.

    >>> histogram_quantile([(0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)], 0.5)
    0.1
    >>> histogram_quantile([(0.1, 0.0), (float("inf"), 0.0)], 0.5) is None
    True
    """
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank = q * total
    lo_b, lo_c = 0.0, 0.0
    for ub, c in buckets:
        if c >= rank:
            if ub == float("inf"):
                return lo_b
            return lo_b + (ub - lo_b) * ((rank - lo_c) / (c - lo_c) if c > lo_c else 1.0)
        lo_b, lo_c = ub, c
    return lo_b


def _samples(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in registry.collect():
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def _sum(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> int:
    return int(sum(v for _, v in samples.get(name, [])))


def canary_stage(samples: dict[str, list[tuple[dict[str, str], float]]]) -> str | None:
    """The staged rollout's stage from its gauges, in the fixed vocabulary the fleet
    reads (``shadow``, ``canary_5``, ``canary_12_5``), or None while none runs.

    >>> canary_stage({"forewarn_rollout_stage": [({}, 1.0)],
    ...               "forewarn_rollout_share": [({}, 0.125)]})
    'canary_12_5'
    >>> canary_stage({"forewarn_rollout_stage": [({}, -1.0)]}) is None
    True
    """
    stage = samples.get("forewarn_rollout_stage")
    if not stage or stage[0][1] < 0:
        return None
    share = samples.get("forewarn_rollout_share", [({}, 0.0)])[0][1]
    if share <= 0:
        return "shadow"
    return "canary_" + f"{share * 100:.4g}".replace(".", "_")


def alert_counts(store_path: Path, now: float) -> dict[str, int]:
    """Unresolved alerts by severity and state, and alerts resolved in the last 24 h."""
    try:
        db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=5.0)
        try:
            rows = db.execute("SELECT severity, state, COUNT(*) FROM alerts WHERE "
                              "state != 'resolved' GROUP BY severity, state").fetchall()
            resolved = db.execute("SELECT COUNT(*) FROM alerts WHERE state = 'resolved' "
                                  "AND resolved_ts >= ?", (now - DAY_S,)).fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StorageError(f"{store_path}: cannot count alerts ({exc})") from exc
    out = {"warning": 0, "critical": 0, "open": 0, "acknowledged": 0, "shelved": 0,
           "suppressed": 0, "resolved_24h": int(resolved)}
    for sev, state, n in rows:
        out[sev] = out.get(sev, 0) + int(n)
        out[state] = out.get(state, 0) + int(n)
    return out


class HealthReporter:
    """Builds a health report every ``interval_s`` and hands it to ``put`` (sealed outbox)."""

    def __init__(self, *, site_id: str, k: int, registry: CollectorRegistry, store_path: Path,
                 models: Callable[[], list[ModelRef]], state_dir: Path, operators: int,
                 put: Callable[[bytes], Any], interval_s: float,
                 on_rejected: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.site_id, self.k, self.registry = site_id, k, registry
        self.store_path, self.models, self.state_dir = store_path, models, state_dir
        self.operators, self.put, self.interval_s = operators, put, interval_s
        self.on_rejected = on_rejected
        self.clock = clock
        self.started = clock()
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def build(self) -> dict[str, Any]:
        now = self.clock()
        s = _samples(self.registry)
        windows = _sum(s, "forewarn_windows_scored_total")
        buckets = sorted((float(lab["le"]), v) for lab, v in
                         s.get("forewarn_inference_duration_seconds_bucket", []))
        p50 = p99 = None
        if windows >= self.k:
            q50, q99 = histogram_quantile(buckets, 0.5), histogram_quantile(buckets, 0.99)
            p50 = None if q50 is None else round(q50 * 1000, 3)
            p99 = None if q99 is None else round(q99 * 1000, 3)
        kpi = alarm_kpis(self.store_path, now, self.operators)
        try:
            du = shutil.disk_usage(self.state_dir)
            free: float | None = round(du.free / du.total, 4) if du.total else None
        except OSError:
            free = None
        return {
            "schema_version": HEALTH_SCHEMA_VERSION, "site_id": self.site_id,
            "hour": int(now // 3600), "agent_version": __version__,
            "uptime_s": int(max(0.0, now - self.started) // 60) * 60,
            "models": [{"group": m.group, "name": m.name, "version": m.version,
                        "model": m.model_sha256} for m in self.models()],
            "windows_scored": windows,
            "alerts": alert_counts(self.store_path, now),
            **verdict_section(self.store_path, self.k),
            "inference_p50_ms": p50, "inference_p99_ms": p99,
            "errors": {"decode": _sum(s, "forewarn_decode_errors_total"),
                       "inference": _sum(s, "forewarn_inference_errors_total"),
                       "dropped": _sum(s, "forewarn_readings_dropped_total")
                       + _sum(s, "forewarn_ingest_queue_dropped_total"),
                       "egress_rejected": _sum(s, "forewarn_egress_rejected_total")},
            # An automatic canary rollback is a failed verdict: a rollout's gate
            # must see it even though the appliance already undid it.
            "canary": {"stage": canary_stage(s),
                       "passed": _sum(s, "forewarn_rollout_stages_passed_total"),
                       "failed": _sum(s, "forewarn_canary_rollbacks_total")},
            "disk_free_ratio": free,
            "alarm": {"operators": kpi.operators, "per_10min_avg": kpi.per_10min_avg,
                      "per_10min_peak": kpi.per_10min_peak, "per_day": kpi.per_day,
                      "floods": kpi.floods, "flood_s": kpi.flood_s,
                      "chattering": kpi.chattering, "stale": kpi.stale},
        }

    def send_once(self) -> bool:
        """Build, validate and queue one report; False (counted, logged) when refused."""
        try:
            body = serialise_health(validate_health(self.build(), self.k))
        except EgressError:
            self.on_rejected()
            log.exception("health report refused by the egress allow-list")
            return False
        except ForewarnError as exc:
            log.error("health report not built: %s", exc)
            return False
        self.put(body)
        self.sent += 1
        return True

    def start(self) -> None:
        if self.interval_s <= 0:
            return
        self._thread = threading.Thread(target=self._run, name="health-report", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.send_once()
            except ForewarnError as exc:  # e.g. outbox disk full: the next period retries
                log.error("health report not queued: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
