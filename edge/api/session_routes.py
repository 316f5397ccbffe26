"""HTTP routes of device sessions (see :mod:`edge.api.sessions` for the design).

``POST /api/session`` signs this device in with a person's token;
``GET``/``DELETE /api/session`` say who is signed in here / sign this device out;
``GET /api/sessions`` and ``DELETE /api/sessions/{id}`` list and revoke any
device's session (anyone signed in may: a lost tablet must be revocable from
any other). Sign-ins, sign-outs and revocations are audited.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from edge.api.responses import ERRORS
from edge.api.routes import Person, _api, _client
from edge.api.sessions import COOKIE, Session, cookie_session

router = APIRouter(tags=["auth"], responses=ERRORS)
SessionId = Annotated[int, Path(ge=1, le=2**53, description="session id")]


class SignInBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=512, description="your personal token")
    device: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$",
                        description="a label for this device, e.g. 'tablet-3'")


def _view(s: Session, current: bool = False) -> dict[str, Any]:
    return {"id": s.id, "person": s.person, "device": s.device, "created": s.created,
            "expires": s.expires, "last_seen": s.last_seen, "client": s.client,
            "current": current}


def _current(request: Request) -> Session | None:
    api = _api(request)
    return cookie_session(request, api.sessions, api.deps.tokens.keys())


@router.post("/api/session")
def sign_in(request: Request, body: SignInBody, response: Response) -> dict[str, Any]:
    """Sign this device in: sets the session cookie (HttpOnly, SameSite=Strict)."""
    api, ip = _api(request), _client(request)
    # As for bearer tokens: the constant-time check first, so the lock-out only ever
    # refuses wrong tokens and one client's guesses never lock a colleague out.
    person = api.auth.person(body.token)
    if person is None and api.limiter.blocked(ip):
        raise HTTPException(429, "too many wrong tokens from this address; try again later",
                            headers={"Retry-After": str(api.limiter.retry_after(ip))})
    if person is None:
        api.limiter.fail(ip)
        api.audit.write(action="auth_failed", person=None, client=ip, path=request.url.path,
                        device=body.device)
        raise HTTPException(401, "token refused")
    device = body.device.strip() or "device"
    secret, s = api.sessions.create(person, device, ip)
    response.set_cookie(COOKIE, secret, max_age=int(api.sessions.lifetime_s), path="/",
                        httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    api.audit.write(action="session_start", person=person, client=ip, device=device,
                    session=s.id, expires=s.expires)
    return _view(s, current=True)


@router.get("/api/session")
def who_is_here(request: Request) -> dict[str, Any]:
    """Who signed this device in, its label and when the session ends."""
    s = _current(request)
    if s is None:
        raise HTTPException(401, "signed out: this device has no live session")
    return _view(s, current=True)


@router.delete("/api/session")
def sign_out(request: Request, response: Response) -> dict[str, Any]:
    """Sign this device out (ends its session for good)."""
    s = _current(request)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    if s is None:
        return {"signed_out": False}
    _api(request).sessions.revoke(s.id)
    _api(request).audit.write(action="session_end", person=s.person, client=_client(request),
                              device=s.device, session=s.id)
    return {"signed_out": True}


@router.get("/api/sessions")
def list_sessions(request: Request, _: Person) -> dict[str, Any]:
    here = getattr(request.state, "session", None)
    return {"items": [_view(s, here is not None and s.id == here.id)
                      for s in _api(request).sessions.list()]}


@router.delete("/api/sessions/{session_id}")
def revoke(request: Request, session_id: SessionId, person: Person) -> dict[str, Any]:
    api = _api(request)
    here = getattr(request.state, "session", None)
    s = api.sessions.revoke(session_id)
    if s is None:
        raise HTTPException(404, f"no live session {session_id}")
    api.audit.write(action="session_revoke", person=person, client=_client(request),
                    target=f"session/{s.id}", device=s.device, session_person=s.person,
                    **({"via_device": here.device} if here else {}))
    return {"revoked": _view(s)}
