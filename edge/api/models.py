"""Model lifecycle over HTTP: list, promote, roll back, set a candidate, compare.

The same operations as ``forewarn model …``, on the same registry; every call
needs a token and lands in the hash-chained audit log (the registry writes it).
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from edge.api.responses import ERRORS
from edge.api.routes import Person, Reader, _api
from edge.core.errors import BundleError, ForewarnError, StorageError

router = APIRouter(tags=["models"], responses=ERRORS)
ModelName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]


class VersionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class CandidateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
                                description="null clears the candidate")


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
    try:
        return {"pointers": _plain(fn(*args, **kwargs))}
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
