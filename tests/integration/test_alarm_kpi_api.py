"""``/api/alarm-kpis`` on the agent's API, from a real alert store driven by the manager."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from edge.alerts import AlertManager, AlertStore, RuleSpec
from edge.api import ApiDeps, create_app
from edge.core.metrics import Metrics
from edge.models.infer import ScoredWindow


def sw(asset: str, ts: float, score: float) -> ScoredWindow:
    return ScoredWindow(asset=asset, ts=ts, score=score, deviations=None, model="m/1")


def test_alarm_kpis_count_annunciations_floods_and_chattering(tmp_path: Path) -> None:
    metrics = Metrics()
    mgr = AlertManager(AlertStore(tmp_path / "alerts.db"),
                       RuleSpec(warning=0.5, critical=0.9, clear_after=1), None, "plant",
                       metrics=metrics)
    app = create_app(ApiDeps(manager=mgr, registry=metrics.registry, read_open=False,
                             tokens={"ana": "ana-0123456789abcdef"}))
    app.state.alarm_operators = 1
    client = TestClient(app, base_url="http://localhost")
    # 12 assets alarm at once: a flood; p-0 clears and re-opens twice: it chatters
    mgr.on_scores([sw(f"p-{i}", 1, 0.6) for i in range(12)])
    for t in (2, 4):
        mgr.on_scores([sw("p-0", t, 0.1)])
        mgr.on_scores([sw("p-0", t + 1, 0.6)])
    assert client.get("/api/alarm-kpis").status_code == 401  # closed reads need a token
    got = client.get("/api/alarm-kpis",
                     headers={"Authorization": "Bearer ana-0123456789abcdef"}).json()
    assert got["alarms"] == 14 and got["floods"] == 1 and got["flood_s"] == 600
    assert got["chattering"] == 1 and got["stale"] == 0
    assert got["per_10min_peak"] == 14 and got["target_per_day"] == 150
    # the counts are named by asset, for the crew page's "Alarm load" panel
    (flood,) = got["flood_items"]
    assert flood["alarms"] == 14 and flood["end"] - flood["start"] == 600
    assert flood["assets"][0] == {"asset": "p-0", "alarms": 3}
    assert sorted(a["asset"] for a in flood["assets"]) == sorted(f"p-{i}" for i in range(12))
    assert got["chattering_items"] == [{"asset": "p-0", "condition": "score",
                                        "transitions": 5}]
    assert got["stale_items"] == []
    mgr.store.close()
