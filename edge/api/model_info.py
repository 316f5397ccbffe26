"""``GET /api/model``: what the active model's score means, for the crew page.

The page turns a score into the crew's words with this: the output ``kind``
(rul / anomaly / probability), its ``unit``, ``alert_when`` (above / below),
the levels and the k-of-n / clear-after / cooldown rule the agent actually
applies (the bundle's ``alert_policy``, or the config's overrides), the typical
score of the training data (``reference_score``, the denominator of "3.4×
normal" for anomaly scores), the probability's horizon when the trainer recorded
it, and every signal's unit and normal band (:mod:`edge.alerts.bands`).
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from edge.alerts.bands import signal_bands
from edge.api.responses import ERRORS
from edge.api.routes import Reader, _api
from edge.models.bundle import Manifest

router = APIRouter(tags=["models"], responses=ERRORS)


def horizon(m: Manifest) -> dict[str, Any] | None:
    """``fails within`` horizon of a probability model, from the trainer's lineage.

    The trainer's ``target.horizon`` counts samples; C-MAPSS samples are engine
    cycles, anything else is converted to seconds with the sample period.
    """
    cfg = m.lineage.get("config")
    target = cfg.get("target") if isinstance(cfg, dict) else None
    h = target.get("horizon") if isinstance(target, dict) else None
    if not isinstance(h, int | float) or isinstance(h, bool) or not math.isfinite(h) or h <= 0:
        return None
    if m.lineage.get("dataset") == "cmapss":
        return {"value": float(h), "unit": "cycles"}
    return {"value": float(h) * m.sample_period_s, "unit": "s"}


def describe(m: Manifest, rules: Any) -> dict[str, Any]:
    ref = m.reference.score
    typical = ref.mean if ref is not None and math.isfinite(ref.mean) and ref.mean > 0 else None
    return {
        "name": m.name, "version": m.version, "kind": m.output.kind, "unit": m.output.unit,
        "alert_when": rules.direction,
        "thresholds": {"warning": rules.warning, "critical": rules.critical,
                       "reset": rules.reset_level},
        # The rule the agent applies (the bundle's alert_policy unless the config
        # overrides a field): the page can say "3 of 5 windows" instead of guessing.
        "alert_rule": {"k": rules.k, "n": rules.n, "clear_after": rules.clear_after,
                       "cooldown_s": rules.cooldown_s},
        "reference_score": typical,
        "horizon": horizon(m) if m.output.kind == "probability" else None,
        "sample_period_s": m.sample_period_s,
        "signals": [{"name": name, **band.to_dict()} for name, band in signal_bands(m).items()],
    }


@router.get("/api/model")
def active_model(request: Request, _: Reader) -> dict[str, Any]:
    """The active model's output meaning, alert levels and signal bands."""
    api = _api(request)
    fn = api.deps.manifest
    m = fn() if fn is not None else None
    if m is None:
        raise HTTPException(404, "this agent was not given its model's manifest")
    return describe(m, api.deps.manager.rules)
