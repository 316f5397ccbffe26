"""HTTP routes: the crew page, the alert API, live events, metrics and health.

Reads are open unless ``read_open`` is off (the default beyond loopback); every
mutation needs ``Authorization: Bearer <token>`` and names the person in the
audit log and in the alert. Repeated wrong tokens from an address get 429, but
only requests carrying a wrong token: a valid token, or none on an open read,
is never refused for someone else's failures.
Handlers that touch SQLite are plain ``def`` so FastAPI runs them in its
thread pool and the event loop (and the live stream) never waits on an fsync.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from edge.alerts.store import Alert, AlertNotFound, AlertStateError
from edge.alerts.verdicts import NOTE_MAX, WORK_ORDER_MAX, WORK_ORDER_PATTERN
from edge.api.app import PAGE_DIR, ApiState
from edge.api.events import EventStreamResponse
from edge.api.responses import ERRORS
from edge.api.sessions import cookie_session
from edge.core.names import check_name

router = APIRouter(responses=ERRORS)
_bearer = HTTPBearer(auto_error=False, description="per-person token from the tokens file")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
AlertId = Annotated[int, Path(ge=1, le=2**53, description="alert id")]
# The one name rule (edge/core/names.py): an asset named here becomes a retained MQTT
# topic, so a control character, wildcard or '/' is a 422 naming the field.
AssetName = Annotated[str, AfterValidator(check_name),
                      Path(min_length=1, max_length=128, description="asset id")]
Note = Field(None, max_length=NOTE_MAX, description="free text for the log")


class NoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = Note


class VerdictBody(BaseModel):
    """What the person found (edge/alerts/verdicts.py): required, there is no default.

    An automated client that closes alerts without looking must say so with
    ``"unsure"``; a silent default would hide that nobody judged the alert.
    """

    model_config = ConfigDict(extra="forbid")
    verdict: Literal["confirmed", "false_alarm", "unsure"] = Field(
        description="confirmed: a real fault; false_alarm: nothing wrong; unsure: could not tell")
    note: str | None = Field(None, max_length=NOTE_MAX,
                             description="what was seen or done (stays on site)")
    work_order: str | None = Field(None, pattern=WORK_ORDER_PATTERN,
                                   max_length=WORK_ORDER_MAX,
                                   description="maintenance work-order id (stays on site)")


class ShelveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    minutes: int = Field(60, ge=1, le=7 * 24 * 60, description="how long to shelve")
    note: str | None = Note


class MaintenanceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: bool = Field(description="true: asset in maintenance, its alerts suppressed")
    note: str | None = Note


def _api(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _identify(request: Request, cred: HTTPAuthorizationCredentials | None,
              required: bool) -> str | None:
    api, ip = _api(request), _client(request)
    if cred is None or not cred.credentials:
        # A signed-in device (edge.api.sessions); bearer tokens take precedence.
        session = cookie_session(request, api.sessions, api.deps.tokens.keys())
        if session is not None:
            return session.person
        if required:
            raise HTTPException(401, "this needs 'Authorization: Bearer <your token>' or a "
                                     "signed-in device (POST /api/session)",
                                headers={"WWW-Authenticate": "Bearer"})
        return None
    # The constant-time check comes first, so the lock-out below only ever refuses
    # wrong tokens (docs/operations.md, "API tokens and the lock-out").
    person = api.auth.person(cred.credentials)
    if person is not None:
        return person
    if api.limiter.blocked(ip):
        if api.limiter.first_refusal(ip):  # one audit line per lock-out, not per guess
            api.audit.write(action="auth_locked", person=None, client=ip,
                            path=request.url.path)
        if api.deps.on_refused:
            api.deps.on_refused("auth_locked")
        raise HTTPException(429, "too many wrong tokens from this address; try again later",
                            headers={"Retry-After": str(api.limiter.retry_after(ip))})
    api.limiter.fail(ip)
    api.audit.write(action="auth_failed", person=None, client=ip, path=request.url.path)
    raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})


def require_person(request: Request, cred: Bearer) -> str:
    person = _identify(request, cred, required=True)
    assert person is not None
    return person


def reader(request: Request, cred: Bearer) -> str | None:
    return _identify(request, cred, required=not _api(request).deps.read_open)


Person = Annotated[str, Depends(require_person)]
Reader = Annotated[str | None, Depends(reader)]


def _out(a: Alert) -> dict[str, Any]:
    return {**a.to_dict(), "top_signals": a.top_signals}


def _mutate(request: Request, person: str, action: str, target: str, note: str | None,
            fn: Callable[[], Any], **details: Any) -> Any:
    api, ip = _api(request), _client(request)
    session = getattr(request.state, "session", None)
    via = {"device": session.device, "session": session.id} if session else {}
    try:
        result = fn()
    except (AlertNotFound, AlertStateError) as exc:
        api.audit.write(action=action, person=person, client=ip, target=target, note=note,
                        result="refused", detail=str(exc), **details, **via)
        raise
    api.audit.write(action=action, person=person, client=ip, target=target, note=note,
                    result="ok", **details, **via)
    return result


# -- page, health, metrics --------------------------------------------------------

@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(PAGE_DIR / "index.html", media_type="text/html")


@router.get("/healthz", tags=["ops"], responses={503: {"description": "unhealthy",
            "content": {"application/json": {"example": {"ok": False}}}}})
def healthz(request: Request) -> Response:
    status = _status(request)
    ok = bool(status.get("ok", True))
    body: dict[str, Any] = {"ok": ok}
    if not ok:
        body["reason"] = status.get("reason", "unhealthy")
    return Response(orjson.dumps(body), status_code=200 if ok else 503,
                    media_type="application/json")


@router.get("/metrics", tags=["ops"], response_class=Response)
def metrics(request: Request) -> Response:
    registry = _api(request).deps.registry
    if registry is None:
        raise HTTPException(404, "metrics are not enabled")
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _status(request: Request) -> dict[str, Any]:
    fn = _api(request).deps.status
    return dict(fn()) if fn is not None else {}


@router.get("/api/status", tags=["ops"])
def status(request: Request, _: Reader) -> dict[str, Any]:
    api = _api(request)
    r = api.deps.manager.rules
    return {"site": api.deps.manager.site, "version": api.deps.manager.version,
            "rules": {"condition": r.condition, "warning": r.warning, "critical": r.critical,
                      "reset": r.reset_level, "direction": r.direction},
            "read_open": api.deps.read_open, "auth": api.auth.configured,
            "agent": _status(request)}


@router.get("/api/whoami", tags=["auth"])
def whoami(person: Person) -> dict[str, str]:
    return {"person": person}


# -- alerts ----------------------------------------------------------------------

@router.get("/api/alerts", tags=["alerts"])
def list_alerts(
    request: Request, _: Reader,
    state: Literal["open", "acknowledged", "resolved", "shelved", "suppressed",
                   "unresolved"] | None = None,
    asset: Annotated[str | None, Query(max_length=128)] = None,
    severity: Literal["warning", "critical"] | None = None,
    since: Annotated[float | None, Query(allow_inf_nan=False,
                                         description="updated at or after (epoch s)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> dict[str, Any]:
    """Unresolved alerts first (critical before warning), then newest."""
    mgr = _api(request).deps.manager
    mgr.open_alerts()  # lets due shelves expire before we read
    items, total = mgr.store.query(state=state, asset=asset, severity=severity, since=since,
                                   limit=limit, offset=offset)
    return {"total": total, "limit": limit, "offset": offset, "items": [_out(a) for a in items]}


@router.get("/api/alerts/{alert_id}", tags=["alerts"])
def get_alert(request: Request, alert_id: AlertId, _: Reader) -> dict[str, Any]:
    mgr = _api(request).deps.manager
    mgr.write_evidence()  # its latest score and history, not the last interval's
    store = mgr.store
    return {**_out(store.require(alert_id)), "events": store.events(alert_id=alert_id)}


@router.post("/api/alerts/{alert_id}/ack", tags=["alerts"])
def ack(request: Request, alert_id: AlertId, person: Person,
        body: Annotated[NoteBody | None, Body()] = None) -> dict[str, Any]:
    note = body.note if body else None
    mgr = _api(request).deps.manager
    return _out(_mutate(request, person, "ack", f"alert/{alert_id}", note,
                        lambda: mgr.ack(alert_id, person, note)))


@router.post("/api/alerts/{alert_id}/resolve", tags=["alerts"])
def resolve(request: Request, alert_id: AlertId, person: Person,
            body: VerdictBody) -> dict[str, Any]:
    """Resolve with the person's verdict (required: 422 naming ``verdict`` without one)."""
    mgr = _api(request).deps.manager
    return _out(_mutate(request, person, "resolve", f"alert/{alert_id}", body.note,
                        lambda: mgr.resolve(alert_id, person, body.note, verdict=body.verdict,
                                            work_order=body.work_order),
                        verdict=body.verdict, work_order=body.work_order))


@router.post("/api/alerts/{alert_id}/shelve", tags=["alerts"])
def shelve(request: Request, alert_id: AlertId, person: Person,
           body: Annotated[ShelveBody | None, Body()] = None) -> dict[str, Any]:
    body = body or ShelveBody(minutes=60)
    until = time.time() + body.minutes * 60
    mgr = _api(request).deps.manager
    return _out(_mutate(request, person, "shelve", f"alert/{alert_id}", body.note,
                        lambda: mgr.shelve(alert_id, person, until, body.note)))


@router.post("/api/alerts/{alert_id}/unshelve", tags=["alerts"])
def unshelve(request: Request, alert_id: AlertId, person: Person,
             body: Annotated[NoteBody | None, Body()] = None) -> dict[str, Any]:
    note = body.note if body else None
    mgr = _api(request).deps.manager
    return _out(_mutate(request, person, "unshelve", f"alert/{alert_id}", note,
                        lambda: mgr.unshelve(alert_id, person, note)))


# -- assets ----------------------------------------------------------------------

@router.get("/api/assets", tags=["assets"])
def assets(request: Request, _: Reader) -> dict[str, Any]:
    deps = _api(request).deps
    items = deps.manager.assets()
    view = deps.commissioning() if deps.commissioning is not None else None
    if view is not None:  # a template: learning assets are listed too, with their state
        from edge.models.commissioning import with_commissioning

        items = with_commissioning(items, view, deps.stale_after_s)
    return {"items": items}


@router.post("/api/assets/{asset}/maintenance", tags=["assets"])
def maintenance(request: Request, asset: AssetName, body: MaintenanceBody,
                person: Person) -> dict[str, Any]:
    mgr = _api(request).deps.manager
    changed = _mutate(request, person, "maintenance_on" if body.on else "maintenance_off",
                      f"asset/{asset}", body.note,
                      lambda: mgr.set_maintenance(asset, body.on, person, body.note))
    return {"asset": asset, "maintenance": body.on, "changed": changed}


# -- live updates ------------------------------------------------------------------

@router.get("/api/events", tags=["alerts"], response_class=StreamingResponse)
async def events(request: Request, _: Reader) -> Response:
    """Server-sent events: ``change`` with ``{"version": n}`` whenever alerts change."""
    api = _api(request)
    return EventStreamResponse(api.feed, api.deps.stream_max_s)
