"""The bundle contract between trainer and edge.

A bundle is a directory ``<name>/<version>/`` holding ``model.onnx`` (raw window
in, score out), ``manifest.json`` (validated by :class:`Manifest`) and
``SIGNATURE`` (see :mod:`edge.models.signing`). The trainer writes bundles with these
models; the agent loads them with :func:`load_bundle`, which checks the
signature, the schema, the graph's inputs and outputs against the manifest,
and runs the manifest's self-test windows before the bundle may score.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from edge.core.errors import BundleError
from edge.core.names import NAME_PATTERN
from edge.core.strict import Strict
from edge.models.lineage import BundleKind
from edge.models.policy import AlertPolicy, policy_problem
from edge.models.signing import KeyRing, check_rights, sha256_file, verify_signature
from edge.models.template import CommissioningSpec

SCHEMA_VERSION: Final = 3
# Names end up in paths, topics and HTML: the one rule of edge/core/names.py.
SafeName = Annotated[str, Field(pattern=NAME_PATTERN)]
MAX_WINDOW = 65_536
MAX_SIGNALS = 256


class SignalSpec(Strict):
    """One input signal and its two ranges (schema 2).

    * ``train_min``/``train_max`` — the **training range**: what the model has
      seen, widened by ``Manifest.limits.margin`` of its span for the limit
      alarm. A reading outside still reaches the window (flagged, optionally
      clipped) and raises a *limit* alert.
    * ``plausible_min``/``plausible_max`` — the **physical-plausibility bound**
      (from the training config, never from data). A reading outside is a
      *sensor fault*: dead-lettered, counted, alerted, kept out of the window.

    Schema 1 had one ``min``/``max`` pair, which the trainer wrote as the
    training range widened by ``range_margin``; it loads as the training range
    (margin 0, it is already in) and no plausibility bound.
    """

    name: SafeName
    unit: str = Field("", max_length=32)
    train_min: float | None = Field(None, description="lowest value in the training data")
    train_max: float | None = Field(None, description="highest value in the training data")
    plausible_min: float | None = Field(
        None, description="lowest physically possible value; below is a sensor fault")
    plausible_max: float | None = Field(
        None, description="highest physically possible value; above is a sensor fault")

    @model_validator(mode="after")
    def _ordered(self) -> SignalSpec:
        for kind, lo, hi in (("train", self.train_min, self.train_max),
                             ("plausible", self.plausible_min, self.plausible_max)):
            for v in (lo, hi):
                if v is not None and not math.isfinite(v):
                    raise ValueError(f"signal {self.name}: {kind} bound {v} is not finite")
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"signal {self.name}: {kind}_min {lo:g} > {kind}_max {hi:g}")
        return self


class LimitSpec(Strict):
    """How the agent treats readings outside the training range (schema 2)."""

    margin: float = Field(
        0.0, ge=0, le=10, description="the limit alarm sits this share of the training span "
        "outside the training range")
    clip: bool = Field(
        False, description="clip such readings to the alarm limit before the model sees "
        "them (the stored history and the alert keep the real value)")


class GapRule(Strict):
    max_hold_samples: int = Field(
        3, ge=0, le=MAX_WINDOW, description="hold the last value for at most this many slots"
    )


class OutputSpec(Strict):
    kind: Literal["rul", "anomaly", "probability"]
    score_output: str = Field(description="name of the ONNX output holding the score [batch]")
    unit: str = ""
    alert_when: Literal["above", "below"] = Field(
        description="an alert condition holds when the score is above/below the level"
    )
    deviations_output: str | None = Field(
        None, description="ONNX output [batch, features] of deviations in reference std units"
    )
    feature_names: list[str] = Field(default_factory=list, max_length=100_000)


class Thresholds(Strict):
    warning: float
    critical: float | None = None
    reset: float | None = Field(None, description="hysteresis level to clear an alert")
    false_alarm_rate: float | None = Field(
        None, ge=0, description="expected false alarms per asset per window at 'warning'"
    )
    rationale: str = ""

    @field_validator("warning", "critical", "reset")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be finite")
        return v


class Histogram(Strict):
    """Reference distribution: quantile bin edges (inner edges; outer bins open)."""

    edges: list[float]
    proportions: list[float]
    mean: float
    std: float

    @model_validator(mode="after")
    def _shape(self) -> Histogram:
        if len(self.proportions) != len(self.edges) + 1:
            raise ValueError("proportions must have len(edges) + 1 entries (open outer bins)")
        if any(b < a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must be non-decreasing")
        return self


class Reference(Strict):
    features: dict[str, Histogram] = Field(default_factory=dict)
    score: Histogram | None = None


class DriftCalibration(Strict):
    """Drift alarm rule and thresholds calibrated by the trainer (see :mod:`edge.drift.monitor`).

    A feature (or the score, key ``"score"``) is *over* in an interval when its PSI
    passes ``psi[name]`` or its absolute mean shift passes ``mean_shift[name]``; it
    alarms when it was over in ``over`` of the last ``of`` intervals. Old bundles
    stored a flat ``{name: psi threshold}`` mapping: it loads as PSI thresholds
    with a 1-of-1 rule and no mean-shift thresholds (their behaviour then).
    """

    psi: dict[str, float] = Field(default_factory=dict)
    mean_shift: dict[str, float] = Field(
        default_factory=dict, description="|mean shift| thresholds, reference std units")
    over: int = Field(1, ge=1, le=64)
    of: int = Field(1, ge=1, le=64)
    k: float | None = Field(None, description="common multiplier of the chunk spreads")
    interval_windows: int | None = Field(None, ge=1, description="interval size calibrated for")
    target_interval_rate: float | None = Field(None, ge=0, le=1)
    expected_interval_rate: float | None = Field(
        None, ge=0, le=1, description="share of reference intervals with any alarm")
    evidence: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        if isinstance(data, dict) and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in data.values()):
            return {"psi": data}
        return data

    @model_validator(mode="after")
    def _rule(self) -> DriftCalibration:
        if self.over > self.of:
            raise ValueError(f"drift rule over={self.over} exceeds of={self.of}")
        return self


class SelfTestCase(Strict):
    window: list[list[float]] = Field(description="[signals][window] raw values")
    expected: float
    tolerance: float = 1e-4


class Manifest(Strict):
    schema_version: Literal[1, 2, 3] = SCHEMA_VERSION
    kind: BundleKind = Field("full", description="full: scores as shipped; template: "
                             "per-asset parameters learned on site (see commissioning)")
    commissioning: CommissioningSpec | None = Field(
        None, description="a template's parameter inputs and how they are learned on site")
    name: SafeName
    version: SafeName
    created: str = ""
    description: str = Field("", max_length=2000)
    signals: list[SignalSpec] = Field(min_length=1, max_length=MAX_SIGNALS)
    sample_period_s: float = Field(gt=0, le=86_400)
    window: int = Field(ge=2, le=MAX_WINDOW)
    hop: int = Field(ge=1, le=MAX_WINDOW)
    gap: GapRule = GapRule()
    limits: LimitSpec = LimitSpec()
    input_name: str = "window"
    output: OutputSpec
    thresholds: Thresholds
    alert_policy: AlertPolicy | None = Field(
        None, description="the deployed alert rule (schema 3; edge.models.policy)")
    reference: Reference = Reference()
    drift_thresholds: DriftCalibration = DriftCalibration()
    metrics: dict[str, float] = Field(default_factory=dict)
    fingerprint: str = ""
    lineage: dict[str, Any] = Field(default_factory=dict)
    libraries: dict[str, str] = Field(default_factory=dict)
    model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    self_test: list[SelfTestCase] = Field(default_factory=list, max_length=64)

    @model_validator(mode="before")
    @classmethod
    def _schema_1(cls, data: Any) -> Any:
        """Schema 1's ``min``/``max`` were the training range plus margin: read them so."""
        if not isinstance(data, dict) or data.get("schema_version") != 1:
            return data
        if "limits" in data:
            raise ValueError("limits is a schema_version 2 field")
        signals = []
        for s in data.get("signals") or []:
            if isinstance(s, dict) and ("min" in s or "max" in s):
                s = {k: v for k, v in s.items() if k not in ("min", "max")} | {
                    "train_min": s.get("min"), "train_max": s.get("max")}
            signals.append(s)
        return {**data, "signals": signals}

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.hop > self.window:
            raise ValueError(f"hop={self.hop} exceeds window={self.window}")
        names = [s.name for s in self.signals]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate signal names in {names}")
        if problem := policy_problem(self.schema_version, self.alert_policy,
                                     self.output.alert_when):
            raise ValueError(problem)
        if self.kind == "site_params":
            raise ValueError("kind site_params: a parameters bundle has its own manifest "
                             "(edge.models.sitekey.load_site_params), not a model manifest")
        if (self.kind == "template") != (self.commissioning is not None):
            raise ValueError("kind template needs a commissioning section, and only a "
                             "template has one")
        return self

    @property
    def signal_names(self) -> list[str]:
        return [s.name for s in self.signals]

    def breached(self, score: float, level: float) -> bool:
        return score > level if self.output.alert_when == "above" else score < level


def read_manifest(path: Path) -> Manifest:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: cannot read manifest ({exc})") from exc
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{path}: invalid manifest: {_explain(exc)}") from exc


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "(root)"
        value = repr(err.get("input"))[:60]
        parts.append(f"{loc} = {value}: {err['msg']}")
    return "; ".join(parts)


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    model_bytes: bytes
    signed_by: str | None

    @property
    def ident(self) -> str:
        return f"{self.manifest.name}/{self.manifest.version}"


def load_bundle(
    path: Path,
    trusted_keys: list[Path] | KeyRing | None = None,
    *,
    allow_unsigned: bool = False,
    site_keys: list[Path] | None = None,
) -> Bundle:
    """Verify and load a bundle directory; raises BundleError naming the file at fault.

    Only ``trusted_keys`` (central keys) may sign a full or template bundle;
    ``site_keys`` are known so that such a signature is refused by name.

    The graph itself is checked against the manifest by :func:`edge.models.infer.Scorer`
    (input shape, outputs, self-test) when the agent builds a session from it.
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: not a bundle directory")
    for f in ("manifest.json", "model.onnx"):
        p = path / f
        if not p.is_file() or p.is_symlink():
            raise BundleError(f"{p}: missing (a bundle needs manifest.json and model.onnx)")
    signer = None
    if not (allow_unsigned and not (path / "SIGNATURE").exists()):
        ring = (trusted_keys if isinstance(trusted_keys, KeyRing)
                else KeyRing.load(trusted_keys or [], site_keys))
        signer = verify_signature(path, ring)
    manifest = read_manifest(path / "manifest.json")
    check_rights(f"{path}: {manifest.name}/{manifest.version}", manifest.kind, signer)
    model_path = path / "model.onnx"
    actual = sha256_file(model_path)
    if actual != manifest.model_sha256:
        raise BundleError(
            f"{model_path}: sha256 {actual[:12]}… does not match manifest.model_sha256 "
            f"{manifest.model_sha256[:12]}…"
        )
    return Bundle(path=path, manifest=manifest, model_bytes=model_path.read_bytes(),
                  signed_by=signer.key_id if signer else None)
