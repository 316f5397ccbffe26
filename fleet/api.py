"""The fleet's HTTP side: the grid page, its JSON, a site's history, /metrics, /healthz.

Auth is on by default, with the appliance's conventions (``edge.api.auth``):
per-person bearer tokens from a ``person:token`` file, compared in constant
time, failed attempts limited per client address. Reads need a token unless
``api.read_open``; ``/metrics`` unless ``api.metrics_open``. The check is one
``Authenticator`` (token -> person), so an OIDC access-token verifier can take
the token file's place without touching the routes.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from edge.api.auth import FailureLimiter
from edge.api.headers import add_security_headers
from edge.core.errors import StorageError
from fleet.gate import GateRules, Verdict, judge
from fleet.grid import build_grid, grid_json
from fleet.store import ReportStore

PAGE_DIR = Path(__file__).parent / "page"
SITE = r"^[A-Za-z0-9_\-]{1,64}$"


class Authenticator(Protocol):
    def person(self, token: str) -> str | None: ...


@dataclass
class FleetApiDeps:
    store: ReportStore
    auth: Authenticator
    registry: CollectorRegistry
    read_open: bool = False
    metrics_open: bool = False
    stale_after_s: float = 3600.0
    clock: Callable[[], float] = time.time


_bearer = HTTPBearer(auto_error=False)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _check(request: Request, cred: HTTPAuthorizationCredentials | None, open_: bool) -> None:
    limiter: FailureLimiter = request.app.state.limiter
    deps: FleetApiDeps = request.app.state.deps
    ip = request.client.host if request.client else "unknown"
    if limiter.blocked(ip):
        raise HTTPException(429, "too many failed token attempts; try again later")
    if cred is None or not cred.credentials:
        if open_:
            return
        raise HTTPException(401, "this needs 'Authorization: Bearer <your token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if deps.auth.person(cred.credentials) is None:
        limiter.fail(ip)
        raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})


def _reader(request: Request, cred: Bearer) -> None:
    _check(request, cred, request.app.state.deps.read_open)


def _scraper(request: Request, cred: Bearer) -> None:
    _check(request, cred, request.app.state.deps.metrics_open)


Reader = Annotated[None, Depends(_reader)]
Scraper = Annotated[None, Depends(_scraper)]


def create_fleet_app(deps: FleetApiDeps) -> FastAPI:
    app = FastAPI(title="Forewarn fleet", version="1", docs_url=None, redoc_url=None)
    app.state.deps = deps
    app.state.limiter = FailureLimiter()

    def grid() -> list[dict[str, Any]]:
        return grid_json(build_grid(deps.store, deps.clock(), deps.stale_after_s))

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=Response)
    def metrics(_: Scraper) -> Response:
        return Response(generate_latest(deps.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/grid")
    def grid_route(_: Reader) -> dict[str, Any]:
        return {"now": deps.clock(), "stale_after_s": deps.stale_after_s, "sites": grid()}

    @app.get("/api/sites/{site_id}/reports")
    def history(site_id: str, _: Reader,
                kind: Annotated[str | None, Query(pattern="^(drift|health)$")] = None,
                limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> dict[str, Any]:
        if not re.match(SITE, site_id):
            raise HTTPException(422, f"site_id={site_id!r} is not a site id")
        rows = deps.store.reports(site_id, kind, limit)
        return {"site_id": site_id, "reports": [
            {"seq": r.seq, "kind": r.kind, "received": r.received, "hour": r.hour,
             "model": r.model, "group": r.group, "body": json.loads(r.body)} for r in rows]}

    @app.get("/api/dead-letters")
    def dead_letters(_: Reader, limit: Annotated[int, Query(ge=1, le=1000)] = 100
                     ) -> list[dict[str, Any]]:
        return deps.store.dead_letters(limit)

    @app.get("/api/gate")
    def gate(_: Reader, sites: Annotated[str, Query(max_length=100_000)],
             version: Annotated[str, Query(pattern=r"^[A-Za-z0-9_.\-+]{1,64}$")],
             name: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.\-+]{1,64}$")] = None,
             hold_s: Annotated[float, Query(ge=0, le=30 * 86_400)] = 0.0,
             fresh_s: Annotated[float | None, Query(gt=0)] = None,
             min_windows: Annotated[int, Query(ge=0)] = 0,
             precision_margin: Annotated[float, Query(ge=0, le=1)] = 0.02,
             error_margin: Annotated[float, Query(ge=0)] = 0.0) -> dict[str, Any]:
        """A rollout stage's health gate (:mod:`fleet.gate`) plus the retrain flag."""
        wanted = [s for s in sites.split(",") if s]
        bad = [s for s in wanted if not re.match(SITE, s)]
        if bad:
            raise HTTPException(422, f"sites: {bad[0]!r} is not a site id")
        now = deps.clock()
        rules = GateRules(version=version, name=name, hold_s=hold_s,
                          fresh_s=fresh_s or deps.stale_after_s, min_windows=min_windows,
                          precision_margin=precision_margin, error_margin=error_margin)
        rows = {r.site_id: r for r in build_grid(deps.store, now, deps.stale_after_s)}
        out: dict[str, Any] = {}
        for s in wanted:
            v = judge(deps.store.reports(s, "health", 500), rules, now)
            r = rows.get(s)
            if v.ok and r is not None and any(c.retrain for c in r.cells
                                              if c.version == version):
                v = Verdict(False, "drift or precision asks for retraining", v.held_s, v.facts)
            out[s] = v.to_dict()
        return {"version": version, "hold_s": hold_s,
                "ok": all(v["ok"] for v in out.values()) and bool(out), "sites": out}

    app.mount("/static", StaticFiles(directory=PAGE_DIR), name="static")

    @app.exception_handler(StorageError)
    async def _storage(_: Request, exc: StorageError) -> JSONResponse:
        return JSONResponse({"detail": f"fleet store unavailable: {exc}"}, status_code=503)

    add_security_headers(app)

    return app
