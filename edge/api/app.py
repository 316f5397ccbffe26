"""FastAPI factory for the crew's page and the alert API (no module-level app)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry

from edge.alerts.manager import AlertManager
from edge.alerts.store import AlertNotFound, AlertStateError
from edge.api.auth import FailureLimiter, TokenAuth
from edge.api.events import ChangeFeed
from edge.api.headers import add_security_headers
from edge.api.limits import LimitsMiddleware, RequestLimits
from edge.api.sessions import SessionStore
from edge.core.audit import AuditLog
from edge.core.errors import ForewarnError, StorageError

PAGE_DIR = Path(__file__).parent / "page"


class AuditSink(Protocol):
    def write(self, **record: Any) -> None: ...


@dataclass
class ApiDeps:
    manager: AlertManager
    registry: CollectorRegistry | None = None
    tokens: Mapping[str, str] = field(default_factory=dict)  # person -> token
    read_open: bool = True  # False: reads need a token too
    status: Callable[[], dict[str, Any]] | None = None  # agent status for /api/status, /healthz
    audit_path: Path | None = None  # JSON lines, used when no ``audit`` sink is given
    audit: AuditSink | None = None  # e.g. the agent's hash-chained edge.core.audit log
    max_failures: int = 5  # failed token attempts per client address ...
    failure_window_s: float = 60.0  # ... within this window before 429
    stream_max_s: float = 300.0  # an SSE stream ends after this; EventSource reconnects
    models: Any | None = None  # the agent's ModelLifecycle (registry + rollout snapshot)
    limits: RequestLimits = field(default_factory=RequestLimits)  # checked before routing
    on_refused: Callable[[str], None] | None = None  # counts refusals by reason (a metric)
    manifest: Callable[[], Any] | None = None  # the active model's Manifest, for /api/model
    commissioning: Callable[[], dict[str, Any] | None] | None = None  # a template's asset states
    stale_after_s: float = 300.0  # data age after which an asset counts as stale
    sessions_path: Path | None = None  # SQLite of device sessions (None: in memory)
    session_days: float = 30.0  # a device stays signed in this long


@dataclass
class ApiState:
    deps: ApiDeps
    auth: TokenAuth
    limiter: FailureLimiter
    audit: AuditSink
    feed: ChangeFeed
    sessions: SessionStore


def create_app(deps: ApiDeps) -> FastAPI:
    from edge.api.commissioning import router as commissioning_router
    from edge.api.kpi import router as kpi_router
    from edge.api.model_info import router as model_info_router
    from edge.api.models import router as models_router
    from edge.api.routes import router
    from edge.api.session_routes import router as session_router
    from edge.api.verdicts import router as verdicts_router

    # Swagger UI and ReDoc load from a CDN, which an offline site cannot reach (and the
    # CSP refuses): the schema itself is served at /openapi.json.
    app = FastAPI(title="Forewarn agent", version="1", docs_url=None, redoc_url=None,
                  description="Alerts of this site's predictive-maintenance agent.")
    app.state.api = ApiState(deps=deps, auth=TokenAuth(deps.tokens),
                             limiter=FailureLimiter(deps.max_failures, deps.failure_window_s),
                             audit=deps.audit or AuditLog(deps.audit_path),
                             feed=ChangeFeed(lambda: deps.manager.version),
                             sessions=SessionStore(deps.sessions_path,
                                                   deps.session_days * 86400.0))
    app.include_router(router)
    app.include_router(models_router)
    app.include_router(session_router)
    app.include_router(model_info_router)
    app.include_router(commissioning_router)

    app.include_router(kpi_router)
    app.include_router(verdicts_router)
    app.mount("/static", StaticFiles(directory=PAGE_DIR), name="static")

    @app.exception_handler(AlertNotFound)
    async def _not_found(_: Request, exc: AlertNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(AlertStateError)
    async def _conflict(_: Request, exc: AlertStateError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(StorageError)
    async def _storage(_: Request, exc: StorageError) -> JSONResponse:
        return JSONResponse({"detail": f"alert store unavailable: {exc}"}, status_code=503)

    @app.exception_handler(ForewarnError)
    async def _refused(_: Request, exc: ForewarnError) -> JSONResponse:
        # Routes translate the errors they expect; any other refusal is still the
        # request's fault or the agent's known state, never an unexplained 500.
        return JSONResponse({"detail": str(exc)}, status_code=400)

    add_security_headers(app)

    # Added last, so it runs first: before the other middleware, routing, auth and body.
    app.add_middleware(LimitsMiddleware, limits=deps.limits, on_refused=deps.on_refused)
    return app
