"""The crew's verdicts over HTTP: amend one later, and read live precision.

Resolving takes a verdict (``POST /api/alerts/{id}/resolve``, in
:mod:`edge.api.routes`); ``POST /api/alerts/{id}/verdict`` gives one to an alert
resolved already (an amendment, the last one counts; or an auto-cleared alert
nobody judged). Both are audited with the verdict and work-order id.

``GET /api/precision`` is live precision (:mod:`edge.alerts.verdicts`) per model
and per asset, each model beside the figure its bundle was validated with
(manifest ``metrics``; null when the trainer wrote none), computed on request
from the alert store through a read-only connection.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from edge.alerts.verdicts import Tally, read_rows, split_model, summarise, validation_figure
from edge.api.responses import ERRORS
from edge.api.routes import AlertId, Person, Reader, VerdictBody, _api, _mutate, _out
from edge.core.errors import ForewarnError

router = APIRouter(tags=["alerts"], responses=ERRORS)
log = logging.getLogger(__name__)


class Counts(BaseModel):
    confirmed: int = Field(description="verdicts: a real fault")
    false_alarm: int = Field(description="verdicts: nothing wrong")
    unsure: int = Field(description="verdicts: could not tell (not in the precision)")
    judged: int = Field(description="confirmed + false_alarm")
    precision: float | None = Field(description="confirmed / judged; null before any")


class Validation(BaseModel):
    metric: str = Field(description="the manifest metric it comes from, e.g. "
                                    "validation_precision, test_window_precision")
    precision: float = Field(ge=0, le=1)


class ModelPrecision(Counts):
    model: str = Field(description="<name>/<version> that opened the alerts")
    name: str
    version: str
    active: bool = Field(description="the version scoring now")
    validation: Validation | None = Field(description="the bundle's own figure; null: none")


class AssetPrecision(Counts):
    asset: str


class KindCounts(Counts):
    kind: Annotated[str, Field(description="limit or sensor_fault: the agent's rules, "
                                           "not a model")]


class PrecisionOut(BaseModel):
    overall: Counts = Field(description="every model alert with a verdict")
    models: list[ModelPrecision]
    assets: list[AssetPrecision]
    rules: list[KindCounts] = Field(description="verdicts on limit and sensor-fault alerts")
    unjudged: int = Field(description="resolved model alerts nobody gave a verdict")


@router.post("/api/alerts/{alert_id}/verdict")
def give_verdict(request: Request, alert_id: AlertId, person: Person,
                 body: VerdictBody) -> dict[str, Any]:
    """A verdict on a resolved alert; replaces the last one (409 while unresolved)."""
    mgr = _api(request).deps.manager
    return _out(_mutate(request, person, "verdict", f"alert/{alert_id}", body.note,
                        lambda: mgr.judge(alert_id, person, body.verdict, body.note,
                                          body.work_order),
                        verdict=body.verdict, work_order=body.work_order))


def _figures(request: Request) -> tuple[dict[str, Validation | None], str | None]:
    """Each known model version's validation figure, and the active version."""
    deps = _api(request).deps
    out: dict[str, Validation | None] = {}
    if deps.models is not None:
        try:
            for b in deps.models.registry.list():
                out[f"{b.name}/{b.version}"] = _validation(b.metrics)
        except (OSError, ForewarnError) as exc:  # the figures show as "—"; precision stays
            log.warning("model registry unreadable for validation figures: %s", exc)
    m = deps.manifest() if deps.manifest is not None else None
    active = None
    if m is not None:
        active = f"{m.name}/{m.version}"
        out[active] = _validation(m.metrics)
    return out, active


def _validation(metrics: dict[str, float]) -> Validation | None:
    got = validation_figure(metrics)
    return None if got is None else Validation(metric=got[0], precision=got[1])


def _counts(t: Tally) -> dict[str, Any]:
    return t.to_dict()


@router.get("/api/precision")
def live_precision(request: Request, _: Reader) -> PrecisionOut:
    """Live precision of model alerts per model and asset, beside each bundle's figure."""
    s = summarise(read_rows(_api(request).deps.manager.store.path))
    figures, active = _figures(request)
    names = set(s.by_model) | ({active} if active else set())
    models = []
    for model in sorted(names):
        name, version = split_model(model)
        models.append(ModelPrecision(model=model, name=name, version=version,
                                     active=model == active, validation=figures.get(model),
                                     **_counts(s.by_model.get(model, Tally()))))
    return PrecisionOut(
        overall=Counts(**_counts(s.overall)), models=models,
        assets=[AssetPrecision(asset=a, **_counts(t)) for a, t in sorted(s.by_asset.items())],
        rules=[KindCounts(kind=k, **_counts(t)) for k, t in sorted(s.by_kind.items())],
        unjudged=s.unjudged)
