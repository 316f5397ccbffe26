"""``forewarn evaluate``: replay a labelled data set through the agent's own objects.

Rows go through :class:`edge.window.WindowSet` (alignment, gap rule, hop), the
windows through :class:`edge.infer.Scorer` in large batches, the scores through
:class:`edge.alerts.rules.RuleMachine` - no broker, the same code the agent
runs. Reports SKAB's point-wise F1/FAR/MAR and alert lead time for anomaly
bundles, RMSE and the NASA score on the official C-MAPSS test set and lead time
before failure for RUL bundles, and writes a self-contained HTML report
(:mod:`trainer.report`).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edge.alerts.rules import RuleSpec
from edge.bundle import Bundle
from edge.errors import ForewarnError
from edge.infer import Scorer
from trainer.calibrate import Counts, pointwise, run_rules
from trainer.report import write_report

BATCH = 8192


@dataclass
class AssetResult:
    asset: str
    row_ts: np.ndarray
    labels: np.ndarray | None
    win_ts: np.ndarray
    scores: np.ndarray
    active: np.ndarray
    opened: list[float]
    threshold: float
    lead_s: list[float] = field(default_factory=list)
    alert_deviations: list[tuple[float, dict[str, float]]] = field(default_factory=list)


@dataclass
class Evaluation:
    kind: str
    protocol: str
    metrics: dict[str, float]
    assets: list[AssetResult]
    readings: int
    seconds: float
    command: str = ""


class _Bar:
    """A plain progress bar on stderr (no dependency)."""

    def __init__(self, total: int, out: TextIO | None) -> None:
        self.total, self.done, self.out, self.t0 = total, 0, out, time.monotonic()

    def step(self, label: str) -> None:
        self.done += 1
        if self.out is None:
            return
        frac = self.done / max(1, self.total)
        bar = "#" * int(30 * frac)
        print(f"\r[{bar:<30}] {self.done}/{self.total} {label:<20.20} "
              f"{time.monotonic() - self.t0:5.1f}s", end="", file=self.out, flush=True)
        if self.done == self.total:
            print(file=self.out)


def score_windows(scorer: Scorer, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Batched Scorer calls (the agent's session, checked and self-tested)."""
    if len(x) == 0:
        return np.empty(0), None
    parts = [scorer.run(np.ascontiguousarray(x[i:i + BATCH])) for i in range(0, len(x), BATCH)]
    devs = [p[1] for p in parts]
    return (np.concatenate([p[0] for p in parts]),
            None if devs[0] is None else np.concatenate(devs))  # type: ignore[arg-type]


def replay_asset(bundle: Bundle, scorer: Scorer, spec: RuleSpec, asset: str,
                 ts: np.ndarray, values: np.ndarray, labels: np.ndarray | None,
                 eval_from: float = float("-inf")) -> AssetResult:
    """Window, score and alert one asset; rows before ``eval_from`` are not scored."""
    from trainer.anomaly_pipeline import feed, window_set

    m = bundle.manifest
    ws = window_set(m.signal_names, m.sample_period_s, m.window, m.hop,
                    m.gap.max_hold_samples)
    win_ts, wins = feed(ws, asset, ts, values)
    scores, devs = score_windows(scorer, wins)
    trace = run_rules(spec, win_ts, scores)
    keep = ts >= eval_from
    res = AssetResult(asset, ts[keep], None if labels is None else labels[keep], win_ts,
                      scores, trace.active, trace.opened, spec.warning)
    names = m.output.feature_names
    for t in trace.opened:
        i = int(np.searchsorted(win_ts, t))
        if devs is not None and i < len(devs):
            top = np.argsort(-np.abs(devs[i]))[:5]
            res.alert_deviations.append((t, {names[j]: float(devs[i][j]) for j in top}))
    return res


def lead_times(row_ts: np.ndarray, labels: np.ndarray, opened: list[float]) -> list[float]:
    """Seconds from each labelled anomaly's start to the first alert opened inside it
    (or within its span); negative never: an alert before the start is a false alarm."""
    out = []
    y = labels.astype(bool)
    starts = np.flatnonzero(y & ~np.r_[False, y[:-1]])
    ends = np.flatnonzero(y & ~np.r_[y[1:], False])
    for s, e in zip(starts, ends, strict=True):
        hit = [t for t in opened if row_ts[s] <= t <= row_ts[e]]
        if hit:
            out.append(min(hit) - float(row_ts[s]))
    return out


def evaluate_skab(root: Path, *, config: Path | None = None, bundle: Bundle | None = None,
                  progress: TextIO | None = sys.stderr) -> Evaluation:
    """SKAB outlier protocol: per file, rows from ``train_rows`` on are the test rows.

    With ``config`` each file gets its own model fit on its first ``train_rows``
    rows (the benchmark's protocol); with ``bundle`` one model scores every file.
    """
    from trainer.anomaly_pipeline import feed, fit_bundle, load_config, window_set
    from trainer.skab import TRAIN_ROWS, load_labelled

    files = load_labelled(root)
    cfg = load_config(config) if config is not None else None
    train_rows = cfg.data.train_rows if cfg else TRAIN_ROWS
    bar = _Bar(len(files), progress)
    counts, assets, readings, t_replay = Counts(), [], 0, 0.0
    for f in files:
        if cfg is not None:
            d, w = cfg.data, cfg.window
            series = f.select(d.signals)
            ws = window_set(d.signals, d.sample_period_s, w.length, w.hop, w.max_hold_samples)
            end_ts, wins = feed(ws, f.asset, f.ts[:train_rows], series[:, :train_rows])
            wins = wins[end_ts < f.ts[train_rows]]
            b = fit_bundle(cfg, wins, series[:, :train_rows])[0].bundle
            spec = cfg.rule(b.manifest.thresholds.warning)
        else:
            assert bundle is not None
            b = bundle
            spec = RuleSpec.from_manifest(b.manifest)
        scorer = Scorer(b)
        values = f.select(b.manifest.signal_names)
        t0 = time.perf_counter()
        r = replay_asset(b, scorer, spec, f.asset, f.ts, values, f.anomaly,
                         eval_from=float(f.ts[train_rows]))
        t_replay += time.perf_counter() - t0
        readings += values.size
        assert r.labels is not None
        counts.add(r.labels, pointwise(r.row_ts, r.win_ts, r.active))
        r.lead_s = lead_times(r.row_ts, r.labels, r.opened)
        assets.append(r)
        bar.step(f.name)
    met = counts.metrics()
    leads = [x for a in assets for x in a.lead_s]
    n_anom = sum(int(np.sum(np.diff(np.r_[0, a.labels]) == 1)) for a in assets
                 if a.labels is not None)
    met.update({"files": float(len(files)), "anomalies": float(n_anom),
                "anomalies_alerted": float(len(leads)),
                "lead_time_median_s": float(np.median(leads)) if leads else float("nan"),
                "readings_per_s": readings / max(t_replay, 1e-9)})
    mode = (f"a model per file fit on its first {train_rows} rows ({config})" if cfg
            else f"one bundle {bundle.ident if bundle else ''} for every file")
    protocol = (
        f"SKAB outlier-detection protocol: {len(files)} labelled files under {root}; per file "
        f"the first {train_rows} rows are training data and the rest the test rows; {mode}. "
        "Rows are replayed through the agent's WindowSet, Scorer and RuleMachine; a test row "
        "counts as predicted anomalous while an alert is open (state after the last window "
        "ending at or before it). Point-wise counts are pooled over all files: F1 = TP / (TP "
        "+ (FP + FN) / 2), FAR = FP / (FP + TN), MAR = FN / (FN + TP), as SKAB's "
        "core/metrics.py (binary). Lead time: from an anomaly's first labelled row to the "
        "first alert opened within it.")
    return Evaluation("anomaly", protocol, met, assets, readings, t_replay)


def evaluate_cmapss(bundle: Bundle, subset: str, data_root: Path | None,
                    progress: TextIO | None = sys.stderr) -> Evaluation:
    """Official C-MAPSS test set: RUL at each engine's last window vs the true RUL."""
    from trainer.data import load_cmapss
    from trainer.models import nasa_score, rmse

    data = load_cmapss(subset, data_root)
    m = bundle.manifest
    scorer, spec = Scorer(bundle), RuleSpec.from_manifest(m)
    bar = _Bar(len(data.test), progress)
    preds, truth, assets, readings, t_replay = [], [], [], 0, 0.0
    for i, u in enumerate(data.test):
        vals = u.signals(m.signal_names)
        ts = u.cycles.astype(np.float64) * m.sample_period_s
        t0 = time.perf_counter()
        r = replay_asset(bundle, scorer, spec, f"engine-{u.unit:03d}", ts, vals, None)
        t_replay += time.perf_counter() - t0
        readings += vals.size
        failure = float(ts[-1]) + float(data.test_rul[i]) * m.sample_period_s
        if len(r.scores):
            preds.append(float(r.scores[-1]))
            truth.append(float(data.test_rul[i]))
        if r.opened:
            r.lead_s = [failure - r.opened[0]]
        assets.append(r)
        bar.step(r.asset)
    p, y = np.asarray(preds), np.asarray(truth)
    leads = [x for a in assets for x in a.lead_s]
    met = {"test_rmse": rmse(p, y), "test_nasa_score": nasa_score(p, y),
           "test_engines": float(len(p)), "engines_alerted": float(len(leads)),
           "lead_time_median_cycles": float(np.median(leads)) / m.sample_period_s
           if leads else float("nan"),
           "readings_per_s": readings / max(t_replay, 1e-9)}
    protocol = (
        f"C-MAPSS {subset} official test set: each test engine's record is replayed through "
        "the agent's WindowSet, Scorer and RuleMachine; the RUL predicted on its last window "
        f"is compared with RUL_{subset}.txt (RMSE on uncapped truth; NASA PHM08 score, "
        "exp(-d/13)-1 early, exp(d/10)-1 late). Lead time: failure cycle (last cycle + true "
        "RUL) minus the cycle the first alert opened.")
    return Evaluation("rul", protocol, met, assets, readings, t_replay)


def _run(args: argparse.Namespace) -> int:
    from edge.bundle import load_bundle

    try:
        bundle = None
        if args.bundle is not None:
            bundle = load_bundle(args.bundle, args.key, allow_unsigned=args.allow_unsigned)
        if args.dataset == "skab":
            if args.config is None and bundle is None:
                raise ForewarnError("skab needs --config (per-file protocol) or --bundle")
            ev = evaluate_skab(args.data, config=args.config if bundle is None else None,
                               bundle=bundle)
        else:
            if bundle is None:
                raise ForewarnError("cmapss needs --bundle (a RUL bundle)")
            ev = evaluate_cmapss(bundle, args.subset, args.data)
    except (ForewarnError, ValueError, FileNotFoundError) as exc:
        print(f"forewarn evaluate: {exc}", file=sys.stderr)
        return 2
    ev.command = "forewarn " + " ".join(sys.argv[1:])
    for k, v in ev.metrics.items():
        print(f"  {k:26s} {v:.4g}")
    if args.report is not None:
        write_report(ev, args.report)
        print(f"report: {args.report}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``evaluate`` to the ``forewarn`` CLI (entry point ``forewarn.commands``)."""
    p = subparsers.add_parser(
        "evaluate", help="replay a labelled data set through the agent's logic; metrics + report",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["skab", "cmapss"], required=True)
    p.add_argument("--data", type=Path, default=None,
                   help="data root (SKAB repository or data/ folder; C-MAPSS folder)")
    p.add_argument("--config", type=Path, default=None,
                   help="anomaly training TOML: fit one model per file (SKAB protocol)")
    p.add_argument("--bundle", type=Path, default=None, help="bundle directory to evaluate")
    p.add_argument("--key", type=Path, action="append", default=None,
                   help="trusted public key(s) for the bundle signature")
    p.add_argument("--allow-unsigned", action="store_true")
    p.add_argument("--subset", default="FD001", help="C-MAPSS subset (default %(default)s)")
    p.add_argument("--report", type=Path, default=None, help="write the HTML report here")
    p.set_defaults(func=_run)
