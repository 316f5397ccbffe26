"""deploy/ files checked by the tools that will read them, and against the code.

ansible-playbook and promtool are required: a missing tool fails the test with
the command that installs it (they are installed by .ci/run).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from edge.core.config import AgentConfig, load_config, parse_config
from edge.core.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROM = DEPLOY / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
METRIC_TOKEN = re.compile(r"\bforewarn_[a-z0-9_]+\b")


def tool(name: str, install: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is not installed; install it with: {install}")
    return exe


STATE_METRIC = re.compile(r'\(\s*"(forewarn_[a-z0-9_]+)",\s*"[^"]*"')


def exposed_metric_names() -> set[str]:
    """Every series name edge/core/metrics.py can expose, with the type suffixes, and the
    names the agent's scrape-time collectors (``Metrics.add_state``) report."""
    names = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                    "info": ["_info"], "gauge": [""]}.get(family.type, [""])
        names.update(family.name + s for s in suffixes)
    for src in (REPO / "edge").rglob("*.py"):
        names.update(STATE_METRIC.findall(src.read_text()))
    return names


# --- agent config example ---

def test_config_example_validates() -> None:
    cfg = load_config(DEPLOY / "forewarn.toml.example")
    assert cfg.state_dir == Path("/var/lib/forewarn")
    assert cfg.bundle.allow_unsigned is False
    assert cfg.mqtt.tls is not None and cfg.mqtt.tls.insecure is False
    # secrets come from systemd credentials, matching LoadCredential= in the unit
    unit = (REPO / "systemd" / "forewarn-agent.service").read_text()
    for secret in (cfg.mqtt.password_file, cfg.api.tokens_file):
        assert secret is not None
        assert str(secret.parent) == "/run/credentials/forewarn-agent.service"
        assert f"LoadCredential={secret.name}:" in unit


def test_config_example_with_every_commented_key_enabled_still_validates() -> None:
    text = (DEPLOY / "forewarn.toml.example").read_text()
    uncommented = re.sub(r"(?m)^#\s*(\[\[?[a-z_.]+\]\]?|[a-z_]+ = .*)$", r"\1", text)
    assert uncommented != text
    raw = tomllib.loads(uncommented)
    cfg = parse_config(raw, source=str(DEPLOY / "forewarn.toml.example"))
    assert cfg.egress.cloud is not None and cfg.alerts.warning is not None
    assert [len(s.nodes) for s in cfg.opcua.servers] == [2]


def _keys(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    """(section, key) for every field, recursing into nested sections."""
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        nested = [a for a in (typing.get_args(ann) or (ann,))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested:
            out += _keys(nested[0], f"{prefix}{name}.")
        else:
            out.append((prefix.rstrip("."), name))
    return out


def test_config_example_documents_every_key() -> None:
    """A commented default config that lacks a key is not a reference any more."""
    text = (DEPLOY / "forewarn.toml.example").read_text()
    sections: dict[str, set[str]] = {}
    current = ""
    for line in text.splitlines():
        bare = line.lstrip("# ").strip()
        if m := re.fullmatch(r"\[\[?([a-z_.]+)\]\]?", bare):  # a table or an array of them
            current = m.group(1)
        elif m := re.match(r"([a-z0-9_]+) = ", bare):
            sections.setdefault(current, set()).add(m.group(1))
    missing = [f"{s}.{k}" if s else k for s, k in _keys(AgentConfig)
               if k not in sections.get(s, set())]
    assert not missing, f"deploy/forewarn.toml.example does not mention: {missing}"


# --- ansible ---

def test_ansible_playbook_syntax() -> None:
    exe = tool("ansible-playbook", "apt-get install -y ansible-core")
    ans = DEPLOY / "ansible"
    r = subprocess.run([exe, "--syntax-check", "-i", str(ans / "inventory.example"),
                        str(ans / "site.yml")], capture_output=True, text=True, timeout=120,
                       cwd=ans)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ansible_bundle_role_verifies_on_the_gateway() -> None:
    tasks = (DEPLOY / "ansible/roles/bundles/tasks/main.yml").read_text()
    assert "forewarn, bundle, verify" in tasks and "forewarn, model, install" in tasks
    assert "allow_unsigned" not in tasks and "allow-unsigned" not in tasks


# --- prometheus ---

@pytest.mark.parametrize("name", ["prometheus.yml", "federation.yml"])
def test_promtool_check_config(name: str) -> None:
    exe = tool("promtool", "apt-get install -y prometheus")
    r = subprocess.run([exe, "check", "config", name], cwd=PROM, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_check_rules() -> None:
    exe = tool("promtool", "apt-get install -y prometheus")
    r = subprocess.run([exe, "check", "rules", *map(str, RULE_FILES)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(RULE_FILES) == 2


RULE_TESTS = sorted((PROM / "tests").glob("*.test.yml"))


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_rule_unit_tests(test_file: Path) -> None:
    """The alerts fire on the series the agent exposes (promtool test rules)."""
    exe = tool("promtool", "apt-get install -y prometheus")
    r = subprocess.run([exe, "test", "rules", str(test_file.relative_to(PROM))], cwd=PROM,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def _alert_names() -> set[str]:
    return set(re.findall(r"- alert: (\w+)", (PROM / "rules" / "forewarn-alerts.yml")
                          .read_text()))


def test_required_alerts_exist() -> None:
    assert {"ForewarnAgentDown", "ForewarnIngestStalled", "ForewarnDriftOverThreshold",
            "ForewarnDiskBudget", "ForewarnOutboxBacklog", "ForewarnBrokerReconnecting",
            "ForewarnDecodeErrorRatio", "ForewarnInferenceSlow", "ForewarnCompactionFailing",
            "ForewarnSensorFaults", "ForewarnReadingsOutsideTraining"} <= _alert_names()


def test_every_alert_operations_md_promises_is_a_rule_with_a_promtool_case() -> None:
    """Alerts named in docs/operations.md exist, and each rule is unit-tested."""
    promised = set(re.findall(r"`(Forewarn[A-Z]\w+)`",
                              (REPO / "docs" / "operations.md").read_text()))
    assert len(promised) >= 10
    assert promised <= _alert_names(), f"promised, no rule: {sorted(promised - _alert_names())}"
    tested = set().union(*(re.findall(r"alertname: (\w+)", f.read_text()) for f in RULE_TESTS))
    assert _alert_names() <= tested, f"no promtool case: {sorted(_alert_names() - tested)}"


def test_rules_reference_only_metrics_the_agent_exposes() -> None:
    exposed = exposed_metric_names()
    used = set()
    for f in RULE_FILES:
        used |= set(METRIC_TOKEN.findall(f.read_text()))
    assert used, "rules reference no forewarn_ metric"
    assert used <= exposed, f"not defined in edge/core/metrics.py: {sorted(used - exposed)}"


def test_federation_is_an_explicit_allow_list_of_recording_rules() -> None:
    fed = (PROM / "federation.yml").read_text()
    recorded = set()
    for f in RULE_FILES:
        recorded |= set(re.findall(r"record: (\S+)", f.read_text()))
    matchers = re.findall(r"^\s*- '(\{.*\})'\s*$", fed, re.M)
    assert matchers, "no match[] selectors found"
    names = []
    for m in matchers:
        # exact names only: a regex on __name__ would let raw series through
        exact = re.fullmatch(r'\{__name__="([^"]+)"(, alertname=~"Forewarn\.\*")?\}', m)
        assert exact, f"match[] selector is not an exact-name allow-list entry: {m}"
        names.append(exact.group(1))
    assert set(names) - {"ALERTS"} <= recorded
    assert recorded <= set(names), f"recording rules not federated: {recorded - set(names)}"
    assert not any(n.startswith("forewarn_") for n in names)


# --- grafana ---

def test_grafana_dashboard_uses_only_defined_metrics() -> None:
    dash = json.loads((DEPLOY / "grafana" / "forewarn-dashboard.json").read_text())
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    assert exprs and all(exprs)
    used = set().union(*(METRIC_TOKEN.findall(e) for e in exprs))
    exposed = exposed_metric_names()
    assert used <= exposed, f"not defined in edge/core/metrics.py: {sorted(used - exposed)}"
    # every series name in an expression is an agent metric (no stray exporters)
    bare = set().union(*(re.findall(r"\b([a-z_]+)(?=\{)", e) for e in exprs))
    assert bare <= exposed, f"unknown series: {sorted(bare - exposed)}"
