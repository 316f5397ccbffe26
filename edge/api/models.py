"""Model lifecycle over HTTP: list, promote, roll back, set a candidate, compare, and
pause, resume, advance or abort a candidate's staged rollout.

The same operations as ``forewarn model …``, on the same registry; every call
that changes something needs a token and lands in the hash-chained audit log
(the registry and the walk store write it). The running agent follows at its
next registry poll; a rollout step it takes in before the call answers.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from edge.api.responses import ERRORS
from edge.api.routes import Person, Reader, _api
from edge.core.errors import BundleError, ForewarnError, StorageError
from edge.models.walkstore import control

router = APIRouter(tags=["models"], responses=ERRORS)
ModelName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]


class VersionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class CandidateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
                                description="null clears the candidate")


class RolloutBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(None, max_length=500, description="why, for the audit log")


def _models(request: Request) -> Any:
    models = _api(request).deps.models
    if models is None:
        raise HTTPException(404, "this agent does not serve from a model registry "
                                 "(set bundle.name in the config)")
    return models


def _plain(x: Any) -> Any:
    return asdict(x) if is_dataclass(x) and not isinstance(x, type) else x


def _installed(request: Request, name: str) -> Any:
    models = _models(request)
    if name not in models.registry.names():  # the registry would touch a missing folder
        raise HTTPException(404, f"model {name!r} is not installed on this agent "
                                 f"(installed: {', '.join(models.registry.names()) or 'none'})")
    return models


def _call(fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"pointers": _plain(_answer(fn, *args, **kwargs))}


def _answer(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except BundleError as exc:
        raise HTTPException(409, str(exc)) from None
    except OSError as exc:
        raise HTTPException(503, f"model registry unavailable: {exc}") from None
    except StorageError as exc:
        raise HTTPException(503, str(exc)) from None
    except ForewarnError as exc:
        raise HTTPException(400, str(exc)) from None


@router.get("/api/models")
def list_models(request: Request, _: Reader) -> dict[str, Any]:
    m = _models(request)
    return {"installed": [b.to_dict() for b in m.registry.list()], "rollout": m.snapshot()}


@router.post("/api/models/{name}/promote")
def promote(request: Request, name: ModelName, body: VersionBody,
            person: Person) -> dict[str, Any]:
    return _call(_installed(request, name).registry.promote, name, body.version, actor=person)


@router.post("/api/models/{name}/rollback")
def rollback(request: Request, name: ModelName, person: Person) -> dict[str, Any]:
    return _call(_installed(request, name).registry.rollback, name, actor=person, reason="api")


@router.post("/api/models/{name}/candidate")
def candidate(request: Request, name: ModelName, body: CandidateBody,
              person: Person) -> dict[str, Any]:
    return _call(_installed(request, name).registry.set_candidate, name, body.version, actor=person,
                 reason="api")


@router.get("/api/models/{name}/rollout")
def rollout_status(request: Request, name: ModelName, _: Reader) -> dict[str, Any]:
    """The candidate's staged rollout: stage, share, hold, pause, why it ended; null if none."""
    st = _answer(_installed(request, name).store.load, name)
    return {"walk": None if st is None else st.summary()}


@router.post("/api/models/{name}/rollout/{op}")
def rollout_control(request: Request, name: ModelName,
                    op: Annotated[Literal["pause", "resume", "advance", "abort"],
                                  Path(description="pause (the hold stops), resume, advance "
                                                   "(skip the rest of the hold), abort (roll "
                                                   "back)")],
                    person: Person, body: RolloutBody | None = None) -> dict[str, Any]:
    models = _installed(request, name)
    reason = (body.reason if body else None) or "api"
    st, step = _answer(control, models.registry, name, op, person, reason)
    # The agent takes the step in now rather than at its next registry poll, so a page
    # loaded after this answer already shows it (a paused walk must never read as running).
    models.poll()
    return {"walk": st.summary(), "step": step.to_dict()}
