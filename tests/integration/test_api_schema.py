"""schemathesis against the running agent's own OpenAPI, over real HTTP.

The agent runs in-process with a real broker, a real SQLite alert store and a
model registry (so the model routes are live), with open alerts to act on.
Every operation gets generated valid and invalid requests, with a valid token
and without one; no answer may be a 5xx, and every answer must be one the
schema documents (status, content type, headers, body).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import checks
from schemathesis.generation import GenerationMode

from edge.app import Agent
from tests.agentkit import Client, agent_config, wait_until
from tests.bundlefactory import make_bundle
from tests.conftest import Broker, free_port

TOKEN = "ana-0123456789abcdef"
ANA = {"Authorization": f"Bearer {TOKEN}"}
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_headers_conformance,
          checks.response_schema_conformance]


@pytest.fixture
def agent(tmp_path: Path, mosquitto: Broker) -> Iterator[tuple[Agent, str]]:
    models = tmp_path / "models"
    v1, pub = make_bundle(models, signals=["a", "b"], window=4, version="1", warning=50.0)
    v2, _ = make_bundle(models, signals=["a", "b"], window=4, version="2", warning=50.0,
                        key_dir=models / "keys")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"ana:{TOKEN}\n")
    port = free_port()
    cfg = agent_config(tmp_path / "state", v1, pub, mosquitto.port,
                       bundle={"name": "test-model", "registry_poll_s": 0.1},
                       api={"port": port, "tokens_file": str(tokens)})
    a = Agent(cfg)
    a.start()
    try:
        a.registry.install(v2, actor="test")
        assert a._server is not None
        # Generated GETs of /api/events must end: a stream lasts 5 minutes by default.
        a._server.config.app.state.api.deps.stream_max_s = 0.2
        c = Client(mosquitto.port)
        for t in range(8):
            for asset in ("p1", "p2"):
                c.publish(f"forewarn/site1/{asset}", {"ts": 1_700_000_000 + t,
                                                      "values": {"a": 100.0, "b": 1.0}})
        c.close()
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{base}/api/alerts").json()["total"] >= 2,
                   what="alerts open")
        yield a, base
    finally:
        a.stop()


def test_candidate_for_a_model_that_is_not_installed_is_404(agent: tuple[Agent, str]) -> None:
    _, base = agent
    r = httpx.post(f"{base}/api/models/0/candidate", json={}, headers=ANA)
    assert r.status_code == 404 and "'0' is not installed" in r.json()["detail"]
    r = httpx.post(f"{base}/api/models/test-model/candidate", json={"version": "9"},
                   headers=ANA)
    assert r.status_code == 409 and "not installed" in r.json()["detail"]
    r = httpx.post(f"{base}/api/models/test-model/candidate", json={}, headers=ANA)
    assert r.status_code == 200 and r.json()["pointers"]["candidate"] is None


def test_openapi_documents_every_handled_error(agent: tuple[Agent, str]) -> None:
    spec = httpx.get(f"{agent[1]}/openapi.json").json()
    assert "ErrorBody" in spec["components"]["schemas"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert {"400", "401", "404", "409", "413", "429", "503"} <= codes, (method, path)
            assert "Retry-After" in op["responses"]["429"]["headers"]


def test_generated_requests_get_documented_answers_and_no_5xx(agent: tuple[Agent, str]) -> None:
    _, base = agent
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    seen: set[int] = set()

    for operation, mode in itertools.product(operations, GenerationMode):
        @given(case=operation.as_strategy(mode))
        @settings(max_examples=12, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def documented(case: Any) -> None:
            for headers in (ANA, None):  # signed in, and whatever the generator sent
                response = case.call_and_validate(base_url=base, headers=headers,
                                                  checks=CHECKS, timeout=10)
                seen.add(response.status_code)

        try:
            documented()
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE:
                raise  # only operations without parameters have no invalid requests
    # the generator got past validation and auth to real answers and refusals
    assert {200, 401, 404, 409, 422} <= seen, seen
