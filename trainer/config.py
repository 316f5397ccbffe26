"""The one training config of every family: a strict TOML tree.

The shared sections (``[bundle]``, ``[data]`` = the one tabular source,
``[window]``, ``[features]``, ``[alerts]``, ``[reference]``, ``[quality]``) are
defined once; ``[model]`` is a discriminated union on ``family`` of the
registry's family sections (:mod:`trainer.families`; a ``[model]`` without
``family`` is ``gradient_boosting``). The family decides the rest:

* the optional sections it takes (``Family.sections``): ``[target]``,
  ``[thresholds]``, ``[regimes]`` and ``[labels]`` for the supervised families,
  ``[calibration]`` for the anomaly families, ``[commissioning]`` for ``pca``.
  A section given to a family that does not take it is refused, naming the
  section and the families that take it;
* the fields of a shared section its pipeline reads (a section's ``ONLY``):
  ``data.subset`` or ``features.centre`` are the supervised pipeline's,
  ``data.train_rows`` the anomaly pipeline's; one given to the other is refused;
* the defaults where the two pipelines differ (:data:`PIPELINE_DEFAULTS`).

:meth:`TrainingConfig.canonical_json` keeps to what the family takes, so a
config's fingerprint (and the ``lineage.config`` a bundle records) is the one
it had when each pipeline had its own tree.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from edge.alerts.rules import RuleSpec
from edge.core.errors import ConfigError
from edge.core.names import NAME_PATTERN
from edge.core.strict import Strict
from edge.models.policy import MAX_RULE_WINDOWS
from trainer.cmapss import INFORMATIVE_SENSORS, SUBSETS, column_index
from trainer.families import DEFAULT_FAMILY, Pipeline, families, family_named
from trainer.families.isoforest import IsoForestSection
from trainer.families.pca import PcaSection
from trainer.families.rul import GradientBoostingSection
from trainer.features import FEATURES, FeatureSpec
from trainer.tablespec import TableSpec

if TYPE_CHECKING:
    from trainer.families import Family

# The [model] sections of the registry's families (a test holds the two equal).
ModelSection = Annotated[GradientBoostingSection | PcaSection | IsoForestSection,
                         Field(discriminator="family")]

# Sections only some families take (Family.sections says which).
OPTIONAL_SECTIONS = ("target", "thresholds", "regimes", "labels", "calibration",
                     "commissioning")

# Where the pipelines' defaults differ: the anomaly families' windows are short
# (a 1 Hz bench, not engine cycles), their alerts debounce, and a healthy tail
# always calibrates. Fields not named here default as their section says.
PIPELINE_DEFAULTS: dict[Pipeline, dict[str, dict[str, Any]]] = {
    "supervised": {},
    "anomaly": {"data": {"dataset": "skab", "validation_fraction": 0.25},
                "window": {"length": 10},
                "alerts": {"k": 3, "n": 5, "clear_after": 5}},
}


class BundleSection(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="bundle name: models/<name>/<version>")
    description: str = Field(default="", max_length=2000)


class DataSection(Strict):
    """``[data]``: where the rows come from (every dataset is read by the table source)."""

    ONLY: ClassVar[dict[str, Pipeline]] = {
        "path": "supervised", "layout": "supervised", "subset": "supervised",
        "min_samples": "supervised", "split_seed": "supervised", "train_rows": "anomaly"}

    dataset: Literal["cmapss", "skab", "table", "history"] = Field(
        default="cmapss", description="cmapss: the NASA C-MAPSS preset of the table source "
        "(trainer.cmapss; supervised families); skab: the SKAB preset, its healthy run "
        "(anomaly families; default there); table: a CSV/Parquet file described by "
        "[data.table]; history: the agent's Parquet history dir (supervised families)")
    path: str = Field(default="", description="table file or history directory (relative "
                      "paths are taken from the config file's directory)")
    layout: Literal["auto", "long", "wide"] = Field(default="auto", description="table form")
    table: TableSpec | None = Field(default=None, description="dataset=table: the table and "
                                    "its columns (trainer.tabular); replaces path/layout")
    subset: str = Field(default="FD001", description="C-MAPSS subset: FD001..FD004")
    signals: list[str] = Field(
        default_factory=lambda: list(INFORMATIVE_SENSORS), min_length=1,
        description="signal names in the window's order (C-MAPSS: s1..s21, op1..op3; "
                    "the anomaly families have no default)")
    min_samples: int | None = Field(
        default=None, ge=1, description="also train on windows ending after this many "
        "samples, front-padded with the first sample (as short test runs are)")
    sample_period_s: float = Field(default=1.0, gt=0, description="seconds per sample (one cycle)")
    train_rows: int = Field(400, ge=10, description="per-file protocol: rows fitted per file")
    validation_fraction: float = Field(
        default=0.2, ge=0, lt=1, description="supervised: share of units held out (whole "
        "units, never windows); anomaly (default 0.25, above 0): tail of each healthy run "
        "held out for calibration")
    split_seed: int = Field(default=0, description="seed of the unit-wise split")
    range_margin: float = Field(
        default=0.1, ge=0, le=10, description="the limit alarm sits this share of the training "
        "span outside the training range (manifest limits.margin)")
    clip_to_limits: bool = Field(
        default=False, description="the agent clips readings past the limit alarm's bounds "
        "before the model sees them (manifest limits.clip); the alert and history keep the "
        "real value")

    @field_validator("subset")
    @classmethod
    def _subset(cls, v: str) -> str:
        if v not in SUBSETS:
            raise ValueError(f"expected one of {', '.join(SUBSETS)}")
        return v

    @field_validator("signals")
    @classmethod
    def _signals(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("duplicate signal names")
        return v


class RegimeSection(Strict):
    """Per-regime standardisation inside the graph (see trainer.regimes)."""

    settings: list[str] = Field(default_factory=list, description="operating-setting signals "
                                "(appended to the window after data.signals); empty = off")
    decimals: list[int] = Field(default_factory=list, description="rounding of each setting "
                                "that makes its set points discrete")
    min_share: float = Field(default=0.01, gt=0, lt=1, description="smallest regime share")


class WindowSection(Strict):
    length: int = Field(default=30, ge=2, le=4096, description="samples per window "
                        "(anomaly families: default 10)")
    hop: int = Field(default=1, ge=1, description="samples between consecutive windows")
    max_hold_samples: int = Field(default=3, ge=0, description="edge gap rule: hold the last value")


class FeatureSection(Strict):
    ONLY: ClassVar[dict[str, Pipeline]] = {
        "centre": "supervised", "ewm_halflife": "supervised", "bands": "supervised",
        "per_signal": "supervised"}

    names: list[str] = Field(default_factory=lambda: list(FEATURES), min_length=1)
    last_n: int = Field(default=5, ge=1, description="samples averaged by the 'last' feature")
    centre: bool = Field(
        default=True, description="take level features relative to each signal's training mean"
    )
    ewm_halflife: float = Field(default=10.0, gt=0, description="'ewm' half-life (samples)")
    bands: int = Field(default=4, ge=1, le=256, description="number of spectral bands")
    per_signal: dict[str, list[str]] = Field(
        default_factory=dict, description="feature list for a signal, replacing 'names' for it")

    @field_validator("names")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        unknown = [f for f in v if f not in FEATURES]
        if unknown:
            raise ValueError(f"unknown features {unknown}; available: {', '.join(FEATURES)}")
        return v

    def spec(self) -> FeatureSpec:
        return FeatureSpec(list(self.names), self.last_n, self.ewm_halflife, self.bands,
                           {k: list(v) for k, v in self.per_signal.items()})


class TargetSection(Strict):
    rul_cap: float = Field(
        default=125.0, gt=0, description="piecewise-linear RUL target cap (cycles)"
    )
    horizon: float = Field(default=30.0, gt=0, description="classifier label: fails within "
                           "this many samples (RUL <= horizon)")


class QualitySection(Strict):
    """The data quality gate before fitting (see trainer.quality)."""

    max_missing: float = Field(default=0.5, ge=0, le=1, description="refuse a signal missing "
                               "from more than this share of its grid slots")
    flat_samples: int = Field(default=20, ge=2, description="report runs of identical values "
                              "at least this long as flat-lined")
    allow: list[str] = Field(default_factory=list, description="signals to keep despite a "
                             "refusal (recorded in the manifest)")
    ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="signal -> [min, max] of physically plausible "
        "values: written to the manifest (plausible_min/max), where the agent treats a "
        "reading outside as a sensor fault; the quality report counts them in training data")

    @field_validator("ranges")
    @classmethod
    def _ordered(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (lo, hi) in v.items():
            if not lo < hi:
                raise ValueError(f"quality.ranges.{name} = [{lo:g}, {hi:g}]: min must be "
                                 "below max")
        return v


class LabelSection(Strict):
    failures: dict[str, float] = Field(default_factory=dict, description="table/history: "
                                       "asset -> failure time (epoch s); runs end there")


class ThresholdSection(Strict):
    warning: float = 30.0
    critical: float | None = 15.0
    reset: float | None = 40.0
    rationale: str = "RUL below 30 cycles: the engine fails within 30 cycles"


class AlertSection(Strict):
    """The alert rule the bundle deploys (manifest ``alert_policy``; the levels are the
    thresholds): ``forewarn evaluate --bundle`` and the agent both apply it. The anomaly
    families' false-alarm calibration and per-file protocol replay it too."""

    k: int = Field(1, ge=1, le=MAX_RULE_WINDOWS,
                   description="open an alert when k of the last n windows breach "
                               "(anomaly families: default 3)")
    n: int = Field(1, ge=1, le=MAX_RULE_WINDOWS, description="the debounce window, in "
                   "windows (anomaly families: default 5)")
    clear_after: int = Field(3, ge=1, description="windows past the reset level to clear "
                             "(anomaly families: default 5)")
    cooldown_s: float = Field(0.0, ge=0, description="no re-open for this long after a clear "
                                                     "(seconds of data time)")

    @model_validator(mode="after")
    def _k_le_n(self) -> AlertSection:
        if self.k > self.n:
            raise ValueError(f"k={self.k} exceeds n={self.n}")
        return self

    def policy(self, direction: str, rationale: str) -> dict[str, Any]:
        """The manifest's ``alert_policy`` section (:class:`edge.models.policy.AlertPolicy`)."""
        return {"levels": "thresholds", "direction": direction, "k": self.k, "n": self.n,
                "clear_after": self.clear_after, "cooldown_s": self.cooldown_s,
                "rationale": rationale}


class ReferenceSection(Strict):
    bins: int = Field(default=10, ge=2, le=100, description="quantile bins of reference histograms")


class CalibrationSection(Strict):
    method: Literal["fixed", "false_alarm_rate"] = "fixed"
    threshold: float = Field(3.0, gt=0, description="level for method=fixed (score units)")
    alarms_per_week: float = Field(1.0, gt=0, description="target for false_alarm_rate")


class CommissioningSection(Strict):
    """``[commissioning]``: write a template whose per-asset parameters are learned on site."""

    rows: int = Field(ge=10, description="readings per signal from an asset's first one "
                      "that the on-site fit uses (the per-file protocol's train_rows)")
    holdout_share: float = Field(0.25, gt=0, lt=1, description="verification: refit on the "
                                 "first (1 - share) of the rows, alert rule on the rest")
    tail_alarm_budget: float = Field(0.5, ge=0, le=1, description="refuse an asset whose "
                                     "alert is active on more of the held-back windows")
    on_verification_failure: Literal["refuse", "flag"] = Field(
        "flag", description="flag: a failed verification installs the parameters marked "
        "unverified (the asset is watched, its false alarms feed the retrain); refuse: "
        "the asset is insufficient_data and raises no model alert")
    min_window_share: float = Field(0.5, gt=0, le=1, description="fewer windows than this "
                                    "share of a gap-free period's is insufficient data")


# Shared sections with fields only one pipeline reads.
_SPLIT_SECTIONS = ("data", "features")


def _refuse(why: str) -> PydanticCustomError:
    # Not a field's error: the message itself names section, value and problem.
    return PydanticCustomError("training_config", "{why}", {"why": why})


class TrainingConfig(Strict):
    bundle: BundleSection
    model: ModelSection
    data: DataSection = Field(default_factory=DataSection)
    window: WindowSection = Field(default_factory=WindowSection)
    features: FeatureSection = Field(default_factory=FeatureSection)
    alerts: AlertSection = Field(default_factory=AlertSection)
    reference: ReferenceSection = Field(default_factory=ReferenceSection)
    quality: QualitySection = Field(default_factory=QualitySection)
    # Family-specific (Family.sections): refused where the family does not take them.
    target: TargetSection = Field(default_factory=TargetSection)
    thresholds: ThresholdSection = Field(default_factory=ThresholdSection)
    regimes: RegimeSection = Field(default_factory=RegimeSection)
    labels: LabelSection = Field(default_factory=LabelSection)
    calibration: CalibrationSection = Field(default_factory=CalibrationSection)
    commissioning: CommissioningSection | None = Field(
        None, description="present: the bundle is a template learned per asset on site")

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, raw: Any) -> Any:
        """The family tag (default gradient_boosting) and its pipeline's defaults."""
        if not isinstance(raw, dict):
            return raw
        model = raw.get("model", {})
        if isinstance(model, dict) and "family" not in model:
            model = {"family": DEFAULT_FAMILY, **model}
        raw = {**raw, "model": model}
        name = model.get("family") if isinstance(model, dict) else None
        family = families().get(name) if isinstance(name, str) else None
        if family is not None:
            for section, values in PIPELINE_DEFAULTS[family.pipeline].items():
                given = raw.get(section, {})
                if isinstance(given, dict):
                    raw[section] = {**values, **given}
        return raw

    @model_validator(mode="after")
    def _family_rules(self) -> TrainingConfig:
        fam = self.family
        self._refused_parts(fam)
        if fam.pipeline == "supervised":
            self._supervised_data()
        else:
            self._anomaly_data()
        self._shapes()
        return self

    @property
    def family(self) -> Family:
        return families()[self.model.family]

    @property
    def inputs(self) -> list[str]:
        """The window's rows: the signals, then any regime settings."""
        return [*self.data.signals, *self.regimes.settings]

    def _refused_parts(self, fam: Family) -> None:
        for name in OPTIONAL_SECTIONS:
            if name in self.model_fields_set and getattr(self, name) is not None \
                    and name not in fam.sections:
                takers = [f.name for f in families().values() if name in f.sections]
                raise _refuse(f"{name} → model.family {fam.name!r} → [{name}] is for "
                              f"{' and '.join(takers)} only")
        for name in _SPLIT_SECTIONS:
            section = getattr(self, name)
            for field, pipeline in section.ONLY.items():
                if pipeline != fam.pipeline and field in section.model_fields_set:
                    raise _refuse(f"{name}.{field} → {getattr(section, field)!r:.60} → "
                                  f"read by the {pipeline} families only, not "
                                  f"{fam.name!r}")

    def _supervised_data(self) -> None:
        d = self.data
        if d.dataset == "skab":
            raise _refuse("data.dataset → 'skab' → SKAB has no failures to learn remaining "
                          'life from: [model] family = "pca" or "isoforest" trains on it')
        if d.dataset == "cmapss":
            for s in [*d.signals, *self.regimes.settings]:
                try:
                    column_index(s)
                except ValueError as exc:
                    where = "data.signals" if s in d.signals else "regimes.settings"
                    raise _refuse(f"{where} → {s!r} → {exc}") from None
        elif d.table is not None:
            if d.dataset != "table" or not d.table.path or d.path:
                raise _refuse(f"data.table → {d.dataset!r} → [data.table] (with its path) is "
                              'for dataset = "table", instead of data.path')
            t = d.table
            if t.train or t.validation or t.test:
                # A run to failure cut by time would end before its failure.
                raise _refuse("data.table.train/validation/test → the RUL families split "
                              "whole assets (data.validation_fraction, data.split_seed); "
                              "time ranges are for the anomaly families")
        elif not d.path:
            raise _refuse(f"data.path → '' → dataset={d.dataset!r} needs data.path")
        r = self.regimes
        if len(r.decimals) != len(r.settings):
            raise _refuse(f"regimes.decimals → {r.decimals} → needs one per setting "
                          f"{r.settings}")
        if set(r.settings) & set(d.signals):
            raise _refuse(f"regimes.settings → {r.settings} → also in data.signals")

    def _anomaly_data(self) -> None:
        d = self.data
        if d.dataset == "history":
            raise _refuse("data.dataset → 'history' → the anomaly families read a table: "
                          "write the history to one with `forewarn export --since ... --out "
                          'h.parquet`, then dataset = "table" and [data.table] path = '
                          '"h.parquet"')
        if d.dataset == "cmapss":
            raise _refuse("data.dataset → 'cmapss' → C-MAPSS is run-to-failure data: "
                          '[model] family = "gradient_boosting" trains on it; an anomaly '
                          'family takes dataset = "skab" or "table"')
        if d.dataset == "table" and (d.table is None or not d.table.path):
            raise _refuse('data.table → missing → dataset = "table" needs [data.table] with '
                          'path = "<file>"')
        if d.dataset == "skab" and d.table is not None:
            raise _refuse('data.table → given → [data.table] is for dataset = "table"; the '
                          "skab preset sets it")
        if "signals" not in d.model_fields_set:
            raise _refuse("data.signals → missing → an anomaly family has no default "
                          "signals: name the window's signals in order")
        if d.validation_fraction <= 0:
            raise _refuse(f"data.validation_fraction → {d.validation_fraction} → an anomaly "
                          "family calibrates on a held-out healthy tail: above 0")

    def _shapes(self) -> None:
        f, w = self.features, self.window
        if f.last_n > w.length:
            raise _refuse(f"features.last_n → {f.last_n} → exceeds window.length {w.length}")
        if w.hop > w.length:
            raise _refuse(f"window.hop → {w.hop} → exceeds window.length {w.length}")
        stray = sorted(set(f.per_signal) - set(self.data.signals))
        if stray:
            raise _refuse(f"features.per_signal → {stray} → not in data.signals")
        stray = sorted(set(self.quality.ranges) - set(self.inputs))
        if stray:
            raise _refuse(f"quality.ranges → {stray} → not in data.signals")

    def canonical_json(self) -> str:
        """Stable text of the config as its family takes it (defaults included): the
        fingerprint's and ``lineage.config``'s."""
        fam = self.family
        d = self.model_dump(mode="json")
        for name in OPTIONAL_SECTIONS:
            if name not in fam.sections or d[name] is None:
                d.pop(name)  # commissioning = None: bundles from before templates
        for name in _SPLIT_SECTIONS:
            for field, pipeline in getattr(self, name).ONLY.items():
                if pipeline != fam.pipeline:
                    d[name].pop(field)
        if self.data.table is None:
            # Configs from before the table source keep their fingerprint.
            d["data"].pop("table")
        if fam.pipeline == "supervised":
            if self.alerts == AlertSection():
                d.pop("alerts")  # likewise for configs from before [alerts] (the same rule)
        else:
            if self.quality == QualitySection():
                d.pop("quality")  # and for anomaly configs from before the quality gate
            if self.alerts.cooldown_s == 0:
                d["alerts"].pop("cooldown_s")  # and from before the cooldown
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    def expect(self, pipeline: Pipeline, where: str) -> TrainingConfig:
        """Itself when its family runs in ``pipeline``; else an error naming ``where``."""
        if self.family.pipeline != pipeline:
            names = [f.name for f in families().values() if f.pipeline == pipeline]
            raise ConfigError(f"{where}: model.family → {self.model.family!r} → the "
                              f"{pipeline} pipeline fits {', '.join(names)}")
        return self

    def rule(self, warning: float) -> RuleSpec:
        """The anomaly families' alert rule at ``warning``: what calibration replays."""
        a = self.alerts
        return RuleSpec(warning=warning, direction="above", k=a.k, n=a.n,
                        clear_after=a.clear_after, cooldown_s=a.cooldown_s,
                        condition="anomaly")


def problems(exc: ValidationError) -> str:
    """Each error as ``key → value → problem`` (a rule across sections: its own text)."""
    return "; ".join(
        e["msg"] if not e["loc"] else
        f"{'.'.join(str(x) for x in e['loc'])} → {e.get('input')!r:.60} → {e['msg']}"
        for e in exc.errors())


def validate(raw: Any, where: str) -> TrainingConfig:
    """``raw`` (a parsed TOML tree, a recorded ``lineage.config``) as a training config;
    a ConfigError naming ``where``, the key, the value and the problem otherwise."""
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict) \
            and "family" in raw["model"]:
        family_named(raw["model"]["family"], where)  # the choices, not pydantic's tag text
    try:
        return TrainingConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: invalid training config: {problems(exc)}") from exc


def load_config(path: Path) -> TrainingConfig:
    """Read a training TOML file; errors name the file, the key, the value and the problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read training config ({exc})") from exc
    return validate(raw, str(path))
