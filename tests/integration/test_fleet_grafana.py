"""The fleet Grafana dashboard queries only metric names the fleet service exports.

The service is scraped for real (a store with reports of two sites) and every
series name in the dashboard's expressions must be in the exposition.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from fastapi.testclient import TestClient

from edge.api.auth import TokenAuth
from fleet.api import FleetApiDeps, create_fleet_app
from fleet.grid import build_grid
from fleet.metrics import FleetMetrics
from fleet.store import Report, open_sqlite
from tests.fleetkit import TOKEN, drift_body, health_body

DASH = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "forewarn-fleet-dashboard.json"
METRIC = re.compile(r"\bforewarn_[a-z0-9_]+\b")


def test_fleet_dashboard_uses_only_exported_metrics(tmp_path: Path) -> None:
    store = open_sqlite(tmp_path / "f.sqlite")
    now = time.time()
    for site in ("s-01", "s-02"):
        store.put(Report(site, 1, "health", now, 1, "", 0, health_body(site).decode()))
        store.put(Report(site, 2, "drift", now, 1, "ab" * 32, 0,
                         drift_body(site, 0, alarm=True).decode()))
    metrics = FleetMetrics()
    metrics.add_grid(lambda: build_grid(store, time.time(), 3600), 100)
    metrics.refused.labels("bad_signature").inc()
    app = create_fleet_app(FleetApiDeps(store=store, auth=TokenAuth({"ops": TOKEN}),
                                        registry=metrics.registry))
    client = TestClient(app)
    assert client.get("/metrics").status_code == 401
    text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    exported = {ln.split("{")[0].split(" ")[0] for ln in text.splitlines()
                if ln and not ln.startswith("#")}
    # A family without samples yet (precision before any crew verdict) is declared.
    exported |= {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE")}
    dash = json.loads(DASH.read_text())
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    used = set().union(*(METRIC.findall(e) for e in exprs))
    assert used, "the dashboard has no queries"
    assert used <= exported, f"not exported by the fleet service: {sorted(used - exported)}"
    # the per-site series really carry the two sites, and only site/model labels
    assert 'forewarn_fleet_drift_alarm{model="cmapss",site="s-02"} 1.0' in text
    labels = set(re.findall(r"\{([^}]*)\}", text))
    assert all(set(re.findall(r"(\w+)=", lab)) <= {"site", "model", "kind", "reason"}
               for lab in labels)
    store.close()


def test_fleet_example_config_parses_and_documents_every_key(tmp_path: Path) -> None:
    import tomllib

    from fleet.config import FleetConfig, parse_config

    example = DASH.parents[1] / "fleet.toml.example"
    cfg = parse_config(tomllib.loads(example.read_text()))
    text = example.read_text()
    for name, field in FleetConfig.model_fields.items():
        sub = getattr(cfg, name)
        keys = list(type(sub).model_fields) if hasattr(type(sub), "model_fields") else []
        assert name in text, name
        for k in keys:
            assert k in text, f"{name}.{k} is not in deploy/fleet.toml.example"
        del field
