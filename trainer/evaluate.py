"""``forewarn evaluate``: replay a labelled data set through the agent's own objects.

Rows go through :class:`edge.scoring.window.WindowSet` (alignment, gap rule, hop), the
windows through :class:`edge.models.infer.Scorer` in large batches, the scores through
:class:`edge.alerts.rules.RuleMachine` - no broker, the same code the agent
runs. Reports SKAB's point-wise F1/FAR/MAR and alert lead time for anomaly
bundles (``--holdout``: threshold and alert rule tuned on one half of the files,
scored on the other, both ways), RMSE and the NASA score on the official C-MAPSS
test set against raw and capped truth, and lead time before failure for RUL
bundles, and writes a self-contained HTML report (:mod:`trainer.report`).

The alert rule of a bundle is the one it deploys: levels from its thresholds, k of n,
clear-after and cooldown from its manifest ``alert_policy``, built by
:meth:`edge.alerts.rules.RuleSpec.from_manifest` exactly as the agent builds it, so
the alert open/close events reported (``--json``) are the agent's on the same data.

The replay rate (readings/s through windowing, scoring and alert rules; data
loading, model fitting and session start-up excluded) is printed at the end.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from edge.alerts.rules import RuleSpec, describe_rule
from edge.models.bundle import Bundle, Manifest
from edge.models.infer import Scorer
from trainer.bulkfeed import (
    AssetResult,
    Series,
    lead_times,
    replay,
    replay_window_set,
    rule_trace,
    window_series,
)
from trainer.calibrate import Counts, pointwise
from trainer.holdout import HOLDOUT_SPLITS, holdout_figures, holdout_folds

if TYPE_CHECKING:
    from trainer.config import TrainingConfig

# Names other modules, tests and bench/ import from here (they predate the split).
__all__ = [
    "HOLDOUT_SPLITS", "AssetResult", "Evaluation", "Series", "evaluate_cmapss",
    "evaluate_skab", "holdout_folds", "register", "replay", "replay_window_set",
    "rule_trace", "window_series",
]

R_MAX = 125.0  # the literature's piecewise-linear RUL cap, when the bundle names none


@dataclass
class Evaluation:
    kind: str
    protocol: str
    metrics: dict[str, float]
    assets: list[AssetResult]
    readings: int
    seconds: float
    command: str = ""
    notes: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0  # process CPU time of the same spans as ``seconds``
    # Which protocol produced the figures: a per-file refit and the deployable bundle
    # as trained give different numbers for one data set and must not be confused.
    scored_by: str = ""
    figure_protocols: dict[str, str] = field(default_factory=dict)  # metric -> protocol
    # The alert rule the replay applied, in words and as fields (the bundle's deployed
    # rule for --bundle: what the agent applies to the same scores).
    rule_text: str = ""
    rule: dict[str, Any] = field(default_factory=dict)

    def protocol_of(self, metric: str) -> str:
        return self.figure_protocols.get(metric, self.scored_by)

    @property
    def rate(self) -> float:
        """Readings/s through windowing, scoring and alert rules (loading excluded)."""
        return self.readings / max(self.seconds, 1e-9)

    def rate_line(self) -> str:
        # CPU time too: on a shared machine wall time measures the neighbours as well.
        return (f"replay rate: {self.rate:,.0f} readings/s wall, "
                f"{self.readings / max(self.cpu_seconds, 1e-9):,.0f} per CPU-second "
                f"({self.readings:,} readings in {self.seconds:.3f} s wall / "
                f"{self.cpu_seconds:.3f} s CPU of windowing, scoring and alert rules; data "
                "loading, model fitting and onnxruntime session start-up excluded)")


class _Clock:
    """Sums wall and process CPU time over the replay spans only."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> _Clock:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


class _Bar:
    """A plain progress bar on stderr (no dependency)."""

    def __init__(self, total: int, out: TextIO | None) -> None:
        self.total, self.done, self.out, self.t0 = total, 0, out, time.monotonic()
        self.shown = float("-inf")

    def step(self, label: str) -> None:
        self.done += 1
        now = time.monotonic()
        # Redrawn at most 10 times a second: it runs inside the timed replay.
        if self.out is None or (now - self.shown < 0.1 and self.done < self.total):
            return
        self.shown = now
        frac = self.done / max(1, self.total)
        bar = "#" * int(30 * frac)
        print(f"\r[{bar:<30}] {self.done}/{self.total} {label:<20.20} "
              f"{time.monotonic() - self.t0:5.1f}s", end="", file=self.out, flush=True)
        if self.done == self.total:
            print(file=self.out)


# -- SKAB ---------------------------------------------------------------------------

SKAB_METRICS = ("Point-wise counts are pooled over all files: F1 = TP / (TP + (FP + FN) / 2), "
                "FAR = FP / (FP + TN), MAR = FN / (FN + TP), as SKAB's core/metrics.py "
                "(binary). Lead time: from an anomaly's first labelled row to the first alert "
                "opened within it.")


@dataclass
class _Runs:
    """What the SKAB files' replays gave: per-asset results and the bundle of each."""

    assets: list[AssetResult] = field(default_factory=list)
    bundles: list[Bundle] = field(default_factory=list)
    readings: int = 0
    rule_text: str = ""
    rule: dict[str, Any] = field(default_factory=dict)


def _bundle_runs(bundle: Bundle, files: list[Any], train_rows: int, bar: _Bar,
                 clock: _Clock) -> _Runs:
    """One deployable bundle, its own alert rule, over every file's test rows."""
    spec = RuleSpec.from_manifest(bundle.manifest)
    runs = _Runs(rule_text=describe_rule(spec, bundle.manifest), rule=rule_fields(spec))
    scorer = Scorer(bundle)
    series = [Series(f.asset, f.ts, f.select(bundle.manifest.signal_names), f.anomaly,
                     float(f.ts[train_rows])) for f in files]
    with clock:
        for r in replay(bundle, scorer, spec, series):
            runs.assets.append(r)
            bar.step(r.asset)
    runs.readings = sum(s.values.size for s in series)
    runs.bundles = [bundle] * len(files)
    return runs


def _per_file_runs(cfg: TrainingConfig, config: Path, files: list[Any], train_rows: int,
                   bar: _Bar, clock: _Clock) -> _Runs:
    """The benchmark's protocol: a model per file fit on its first ``train_rows`` rows."""
    from trainer.anomaly_pipeline import feed, fit_bundle, window_set

    a = cfg.alerts
    runs = _Runs(rule_text=f"per file: the warning level of that file's model; k={a.k} "
                           f"n={a.n} clear_after={a.clear_after} cooldown_s={a.cooldown_s:g} "
                           f"from the config's [alerts] ({config})",
                 rule={"levels": "per file", **a.model_dump()})
    d, w = cfg.data, cfg.window
    for f in files:
        values = f.select(d.signals)
        ws = window_set(d.signals, d.sample_period_s, w.length, w.hop, w.max_hold_samples)
        end_ts, wins = feed(ws, f.asset, f.ts[:train_rows], values[:, :train_rows])
        wins = wins[end_ts < f.ts[train_rows]]
        b = fit_bundle(cfg, wins, values[:, :train_rows])[0].bundle
        spec = cfg.rule(b.manifest.thresholds.warning)
        scorer = Scorer(b)
        s = Series(f.asset, f.ts, values, f.anomaly, float(f.ts[train_rows]))
        with clock:
            runs.assets.extend(replay(b, scorer, spec, [s]))
        runs.readings += values.size
        runs.bundles.append(b)
        bar.step(f.name)
    return runs


def _pointwise(assets: list[AssetResult]) -> dict[str, float]:
    """Each alert's lead time, and the point-wise counts pooled over every file."""
    counts = Counts()
    for r in assets:
        assert r.labels is not None
        r.lead_s = lead_times(r.row_ts, r.labels, r.opened)
        counts.add(r.labels, pointwise(r.row_ts, r.win_ts, r.active))
    return counts.metrics()


def _scored_by(per_file: bool, bundle: Bundle | None, train_rows: int, holdout: str | None,
               met: dict[str, float]) -> tuple[str, dict[str, str]]:
    """What scored the figures: per-file refits (each figure in or out of sample) or
    the deployable bundle."""
    if not per_file:
        assert bundle is not None
        return f"the deployable bundle {bundle.ident} as trained", {}
    scored_by = (f"per-file refit: a model fit on each file's first {train_rows} rows "
                 "(not a deployable bundle)")
    return scored_by, {k: scored_by + (
        ", alert level and rule of the config (in-sample)"
        if holdout is None or k.startswith("insample_")
        else ", alert level and rule tuned on the other half (held out)") for k in met}


def evaluate_skab(root: Path, *, config: Path | None = None, bundle: Bundle | None = None,
                  holdout: str | None = None,
                  progress: TextIO | None = sys.stderr) -> Evaluation:
    """SKAB outlier protocol: per file, rows from ``train_rows`` on are the test rows.

    With ``config`` each file gets its own model fit on its first ``train_rows``
    rows (the benchmark's protocol); with ``bundle`` one model scores every file.
    ``holdout`` (a :data:`HOLDOUT_SPLITS` name, with ``config``) chooses the alert
    level and rule on one half of the files and reports the other half, both ways.
    """
    from trainer.config import load_config
    from trainer.skab import TRAIN_ROWS, load_labelled

    if holdout is not None and config is None:
        raise ValueError("--holdout needs --config: the per-file models are tuned, not a "
                         "fixed bundle")
    files = load_labelled(root)
    cfg = load_config(config).expect("anomaly", str(config)) if config is not None else None
    train_rows = cfg.data.train_rows if cfg else TRAIN_ROWS
    bar, clock = _Bar(len(files), progress), _Clock()
    if cfg is not None:
        assert config is not None
        runs = _per_file_runs(cfg, config, files, train_rows, bar, clock)
    else:
        assert bundle is not None
        runs = _bundle_runs(bundle, files, train_rows, bar, clock)
    assets = runs.assets
    met = _pointwise(assets)
    mode = (f"a model per file fit on its first {train_rows} rows ({config})" if cfg
            else f"one bundle {bundle.ident if bundle else ''} for every file")
    replayed = ("Rows are replayed through the agent's WindowSet, Scorer and RuleMachine; a "
                "test row counts as predicted anomalous while an alert is open (state after "
                "the last window ending at or before it). ")
    protocol = (f"SKAB outlier-detection protocol: {len(files)} labelled files under {root}; "
                f"per file the first {train_rows} rows are training data and the rest the "
                f"test rows; {mode}. " + replayed)
    notes: list[str] = []
    if holdout is not None and cfg is not None:
        insample = {f"insample_{k}": v for k, v in met.items() if k in ("f1", "far_pct",
                                                                         "mar_pct")}
        met, text, notes = holdout_figures(cfg.rule(cfg.calibration.threshold), holdout,
                                           [f.name for f in files], assets, runs.bundles)
        met.update(insample)
        protocol += text
    else:
        protocol += ("The alert level and rule are the config's, chosen on these same files "
                     "(an in-sample figure; --holdout gives a held-out one). " if cfg else "")
    leads = [x for a in assets for x in a.lead_s]
    n_anom = sum(int(np.sum(np.diff(np.r_[0, a.labels]) == 1)) for a in assets
                 if a.labels is not None)
    met.update({"files": float(len(files)), "anomalies": float(n_anom),
                "anomalies_alerted": float(len(leads)),
                "lead_time_median_s": float(np.median(leads)) if leads else float("nan"),
                "readings_per_s": runs.readings / max(clock.wall, 1e-9)})
    scored_by, per = _scored_by(cfg is not None, bundle, train_rows, holdout, met)
    return Evaluation("anomaly", protocol + SKAB_METRICS, met, assets, runs.readings,
                      clock.wall, notes=notes, cpu_seconds=clock.cpu, scored_by=scored_by,
                      figure_protocols=per, rule_text=runs.rule_text, rule=runs.rule)


# -- C-MAPSS ------------------------------------------------------------------------

def rul_cap_of(m: Manifest) -> tuple[float, str]:
    """The training cap R_max from the bundle's lineage, else the literature's 125."""
    cap = (m.lineage.get("config") or {}).get("target", {}).get("rul_cap")
    if isinstance(cap, int | float) and cap > 0:
        return float(cap), "from the bundle's training config"
    return R_MAX, "the literature's value; the bundle names none"


def evaluate_cmapss(bundle: Bundle, subset: str, data_root: Path | None,
                    progress: TextIO | None = sys.stderr) -> Evaluation:
    """Official C-MAPSS test set: RUL at each engine's last window vs the true RUL."""
    from trainer.cmapss import load_cmapss
    from trainer.metrics import nasa_score, rmse

    data = load_cmapss(subset, data_root)
    m = bundle.manifest
    scorer, spec = Scorer(bundle), RuleSpec.from_manifest(m)
    bar = _Bar(len(data.test), progress)
    series = [_padded(u.unit, u.signals(m.signal_names), m.window, m.hop, m.sample_period_s)
              for u in data.test]
    padded = sum(1 for u in data.test if len(u) < m.window)
    preds, truth, assets = [], [], []
    clock = _Clock()
    with clock:
        for i, r in enumerate(replay(bundle, scorer, spec, series)):
            failure = float(series[i].ts[-1]) + float(data.test_rul[i]) * m.sample_period_s
            if len(r.scores):
                preds.append(float(r.scores[-1]))
                truth.append(float(data.test_rul[i]))
            if r.opened:
                r.lead_s = [failure - r.opened[0]]
            assets.append(r)
            bar.step(r.asset)
    readings = sum(s.values.size for s in series)
    p, y = np.asarray(preds), np.asarray(truth)
    cap, cap_from = rul_cap_of(m)
    y_cap = np.minimum(y, cap)
    leads = [x for a in assets for x in a.lead_s]
    met = {"test_rmse": rmse(p, y), "test_nasa_score": nasa_score(p, y),
           "test_rmse_capped": rmse(p, y_cap), "test_nasa_score_capped": nasa_score(p, y_cap),
           "floor_rmse_uncapped": rmse(y_cap, y), "floor_nasa_score_uncapped":
           nasa_score(y_cap, y), "rul_cap": cap, "test_engines": float(len(p)),
           "test_engines_unscored": float(len(series) - len(p)),
           "test_engines_padded": float(padded),
           "engines_alerted": float(len(leads)),
           "lead_time_median_cycles": float(np.median(leads)) / m.sample_period_s
           if leads else float("nan"),
           "readings_per_s": readings / max(clock.wall, 1e-9)}
    protocol = (
        f"C-MAPSS {subset} official test set: each test engine's record is replayed through "
        "the agent's WindowSet, Scorer and RuleMachine; the RUL predicted on its last window "
        f"is compared with RUL_{subset}.txt. Piecewise-linear target, R_max = {cap:g} "
        f"({cap_from}): test_rmse / test_nasa_score use the test truth as given; "
        "test_rmse_capped / test_nasa_score_capped use min(truth, R_max), i.e. R_max applied "
        "to the test truth as in the literature. NASA PHM08 score: exp(-d/13)-1 early, "
        "exp(d/10)-1 late, d = predicted - true. Every official test engine is scored, as "
        "in training and the literature: an engine shorter than one window is padded in "
        "front by repeating its first cycle, as the trainer pads it "
        "(test_engines_padded), so these figures equal the manifest's test metrics. Lead "
        "time: failure cycle (last cycle + true RUL) minus the cycle the first alert opened.")
    over = int(np.sum(y > cap))
    notes = [
        f"Floor against uncapped truth: a model trained on RUL capped at {cap:g} predicts at "
        f"most {cap:g}, so even a perfect one (predicting min(truth, {cap:g})) scores RMSE "
        f"{met['floor_rmse_uncapped']:.2f} (= RMSE of max(truth - {cap:g}, 0)) and NASA score "
        f"{met['floor_nasa_score_uncapped']:.1f} on {subset}'s uncapped truth; {over} of "
        f"{len(y)} test engines have truth above {cap:g}. Published figures below that floor "
        "can only be read against capped truth: compare them with test_rmse_capped."]
    return Evaluation("rul", protocol, met, assets, readings, clock.wall, notes=notes,
                      cpu_seconds=clock.cpu, scored_by=f"the deployable bundle {bundle.ident} "
                      f"as trained, on the C-MAPSS {subset} official test set",
                      rule_text=describe_rule(spec, m), rule=rule_fields(spec))


def rule_fields(spec: RuleSpec) -> dict[str, Any]:
    """The applied rule as JSON fields."""
    return {"warning": spec.warning, "critical": spec.critical, "reset": spec.reset,
            "direction": spec.direction, "k": spec.k, "n": spec.n,
            "clear_after": spec.clear_after, "cooldown_s": spec.cooldown_s,
            "condition": spec.condition}


def _padded(unit: int, values: np.ndarray, window: int, hop: int, period: float) -> Series:
    """An engine's record, padded in front by repeating its first cycle (as
    :func:`trainer.windows.last_window` pads it for the trainer's test metrics) so that
    it fills a window and its last window ends on its last cycle for any hop."""
    n = values.shape[1]
    pad = window - n if n < window else (-(n - window)) % hop
    values = np.concatenate([np.repeat(values[:, :1], pad, axis=1), values], axis=1)
    # Cycles count from 1; the padding takes the first ones, so timestamps stay positive.
    return Series(f"engine-{unit:03d}", np.arange(1, n + pad + 1, dtype=np.float64) * period,
                  values)


def register(subparsers: Any) -> None:
    """Add ``evaluate`` to the ``forewarn`` CLI (entry point ``forewarn.commands``)."""
    # The command line lives next door (this module holds the protocols); imported
    # here because the installed entry point names this module.
    from trainer.evaluate_cli import register_evaluate

    register_evaluate(subparsers)
