"""The bulk feed of ``forewarn evaluate``: the agent's WindowSet, Scorer and RuleMachine
replayed over whole recorded series, no broker.

Rows go through the agent's range rule (:mod:`edge.scoring.ranges`: an impossible value is
left out, readings past the limit alarm are clipped when the manifest says so), then
:class:`edge.scoring.window.WindowSet` (alignment, gap rule, hop) in blocks,
the windows of several assets are pooled into large :class:`edge.models.infer.Scorer`
batches, and each asset's scores go through a fresh
:class:`edge.alerts.rules.RuleMachine`. The trainer takes its training windows from
:func:`window_series` too, so training and evaluation see the agent's windows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from edge.alerts.rules import RuleMachine, RuleSpec, Transition
from edge.models.bundle import Bundle, Manifest
from edge.models.infer import Scorer
from edge.scoring.ranges import SignalBounds, apply_rows, bounds_of
from edge.scoring.window import ReadyWindow, WindowSet
from trainer.calibrate import RuleTrace

# Windows per onnxruntime call: 1,024 ran ~1.7x faster than 8,192 per CPU-second on the
# FD001 bundle (cache); windows of several assets are pooled up to POOL before scoring.
BATCH = 1024
POOL = 8192
REPLAY_BLOCK = 8192  # rows written per signal before the next signal (= lateness bound)


@dataclass(frozen=True)
class Series:
    """One asset's rows for a replay: ``values[signals, t]`` at ``ts`` (epoch s)."""

    asset: str
    ts: np.ndarray
    values: np.ndarray
    labels: np.ndarray | None = None
    eval_from: float = float("-inf")  # rows before this are replayed but not evaluated


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
    events: list[Transition] = field(default_factory=list)  # the rule machine's, in order
    alert_deviations: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    deviations: np.ndarray | None = field(default=None, repr=False)


def replay_window_set(m: Manifest, rows: int) -> WindowSet:
    """A WindowSet on the bundle's grid whose lateness bound covers a feed block.

    Which slots close, with which held values, does not depend on the lateness
    bound for rows fed in time order; sizing it to the series (at most
    :data:`REPLAY_BLOCK`) keeps the buffer small for short series and lets a
    whole block per signal go in with one ``add_series`` call.
    """
    block = max(1, min(REPLAY_BLOCK, rows))
    return WindowSet(m.signal_names, period=m.sample_period_s, window=m.window, hop=m.hop,
                     max_hold=m.gap.max_hold_samples, max_lateness=block)


def model_rows(m: Manifest) -> list[SignalBounds | None] | None:
    """Per signal, the bounds that change what the agent windows (a plausibility bound,
    or clipping); None when no signal has one, so rows go in untouched."""
    bounds = bounds_of(m.signals, m.limits)
    out = [bounds.get(n) for n in m.signal_names]
    keep = [b if b is not None and (b.clip or math.isfinite(b.plausible_low)
                                    or math.isfinite(b.plausible_high)) else None for b in out]
    return keep if any(b is not None for b in keep) else None


def window_series(ws: WindowSet, asset: str, ts: np.ndarray, values: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Feed one asset's rows through ``ws``; returns ``(end_ts [n], windows [n, s, w])``.

    Rows go in with ``add_series``, a block of up to ``ws.max_lateness + 1`` slots per
    signal at a time. Missing slots of a gap no longer than a window, and non-finite
    values (the agent's decoder drops them), are written as NaN inside the block:
    WindowSet takes a NaN as a reading that never came (it fills nothing, starts no
    buffer and moves no lateness bound), so the gap rule holds or rejects it exactly
    as live. A lone slot (a run of one row) is written value by value. Duplicate,
    backward and longer steps start a new run. A last reading one lateness bound
    after the last row closes the tail, as the next live reading would. Same windows
    as feeding every finite reading with ``add_point``
    (tests/integration/test_evaluate_replay.py).
    """
    period, lateness = ws.period, ws.max_lateness
    slots = np.rint(ts / period).astype(np.int64)
    steps = np.diff(slots)
    cuts = np.flatnonzero((steps < 1) | (steps > ws.window)) + 1
    bounds = np.r_[0, cuts, len(ts)].tolist()
    out: list[ReadyWindow] = []
    for lo, hi in pairwise(bounds):
        rel = slots[lo:hi] - slots[lo]
        width = int(rel[-1]) + 1
        v = values[:, lo:hi]
        if width != hi - lo or not np.isfinite(v).all():
            dense = np.full((len(ws.signals), width), np.nan)
            dense[:, rel] = np.where(np.isfinite(v), v, np.nan)
            v = dense
        t_run = float(slots[lo]) * period
        edges = [*range(0, width, lateness), width]
        if len(edges) > 2 and edges[-1] - edges[-2] == 1:
            del edges[-2]  # no one-slot block: lateness + 1 slots still close together
        for a, b in pairwise(edges):
            if b - a == 1:
                for si, sig in enumerate(ws.signals):
                    if np.isfinite(v[si, a]):
                        ws.add_point(asset, sig, t_run + a * period, float(v[si, a]))
            else:
                ws.add_rows(asset, t_run + a * period, period, v[:, a:b])
            out.extend(ws.drain())
    if len(ts):
        # Lands one lateness bound past the last row: closes every slot up to it, none after.
        ws.add_point(asset, ws.signals[0], float(slots[-1] + lateness + 1) * period, 0.0)
        out.extend(ws.drain())
    if not out:
        return np.empty(0), np.empty((0, len(ws.signals), ws.window), np.float32)
    return (np.fromiter((w.end_ts for w in out), np.float64, len(out)),
            np.stack([w.values for w in out]))


def score_windows(scorer: Scorer, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Batched Scorer calls (the agent's session, checked and self-tested)."""
    if len(x) == 0:
        return np.empty(0), None
    parts = [scorer.run(np.ascontiguousarray(x[i:i + BATCH])) for i in range(0, len(x), BATCH)]
    devs = [p[1] for p in parts]
    return (np.concatenate([p[0] for p in parts]),
            None if devs[0] is None else np.concatenate(devs))  # type: ignore[arg-type]


def rule_trace(spec: RuleSpec, ts: np.ndarray, scores: np.ndarray) -> RuleTrace:
    """One asset's scores through a fresh RuleMachine, skipping provably idle stretches.

    Identical to :func:`trainer.calibrate.run_rules`: once the machine is closed
    and its last ``n`` samples were finite and below the warning level, its k-of-n
    window holds no breach, so nothing can open (and, closed, nothing can escalate
    or clear) before the next breaching score; those updates are skipped (the
    machine's healthy-run count, the only state they would touch, is reset when an
    alert opens). Needs non-decreasing ``ts``
    (WindowSet end times are increasing); otherwise every score is fed.
    """
    m = RuleMachine(spec)
    n = len(ts)
    active = np.zeros(n, dtype=bool)
    opened: list[float] = []
    s = np.asarray(scores, np.float64)
    finite = np.isfinite(s)
    with np.errstate(invalid="ignore"):
        breach = finite & (s > spec.warning if spec.direction == "above" else s < spec.warning)
    can_skip = n < 2 or bool(np.all(np.diff(ts) >= 0))
    nxt = np.flatnonzero(breach)
    ts_l, s_l, fin_l, br_l = ts.tolist(), s.tolist(), finite.tolist(), breach.tolist()
    events: list[Transition] = []
    quiet, i = 0, 0  # quiet: finite non-breaching samples fed since the last breach
    while i < n:
        if can_skip and quiet >= spec.n and not m.active:
            j = int(np.searchsorted(nxt, i))
            i = int(nxt[j]) if j < len(nxt) else n  # active[] stays False in between
            quiet = 0  # sample i breaches: it must be fed
            continue
        for tr in m.update(ts_l[i], s_l[i]):
            events.append(tr)
            if tr.kind == "opened":
                opened.append(tr.ts)
        active[i] = m.active
        if br_l[i]:
            quiet = 0
        elif fin_l[i]:
            quiet += 1
        i += 1
    return RuleTrace(active, opened, events)


def _result(bundle: Bundle, spec: RuleSpec, s: Series, win_ts: np.ndarray,
            scores: np.ndarray, devs: np.ndarray | None) -> AssetResult:
    trace = rule_trace(spec, win_ts, scores)
    keep = s.ts >= s.eval_from
    res = AssetResult(s.asset, s.ts[keep], None if s.labels is None else s.labels[keep],
                      win_ts, scores, trace.active, trace.opened, spec.warning,
                      events=trace.events, deviations=devs)
    res.alert_deviations = alert_deviations(bundle, res)
    return res


def alert_deviations(bundle: Bundle, r: AssetResult) -> list[tuple[float, dict[str, float]]]:
    """The five features furthest from the reference when each alert opened."""
    names, devs, out = bundle.manifest.output.feature_names, r.deviations, []
    if devs is None:
        return []
    for t in r.opened:
        i = int(np.searchsorted(r.win_ts, t))
        if i < len(devs):
            top = np.argsort(-np.abs(devs[i]))[:5]
            out.append((t, {names[j]: float(devs[i][j]) for j in top}))
    return out


def replay(bundle: Bundle, scorer: Scorer, spec: RuleSpec, series: Iterable[Series],
           pool: int = POOL) -> Iterator[AssetResult]:
    """Window, score and alert each series, in order; windows of consecutive series
    share onnxruntime calls; at most about ``pool`` windows wait (memory stays bounded)."""
    m = bundle.manifest
    # The agent's range rule (edge.scoring.ranges): an impossible value never reaches the
    # window (NaN here, as a reading that never came); with limits.clip, readings
    # past the limit alarm are clipped. Readings merely outside training go in as is.
    rows = model_rows(m)
    pending: list[tuple[Series, np.ndarray, np.ndarray]] = []
    size = 0

    def flush() -> Iterator[AssetResult]:
        nonlocal size
        if not pending:
            return
        x = pending[0][2] if len(pending) == 1 else np.concatenate([p[2] for p in pending])
        scores, devs = score_windows(scorer, x)
        lo = 0
        for s, win_ts, _ in pending:
            hi = lo + len(win_ts)
            yield _result(bundle, spec, s, win_ts, scores[lo:hi],
                          None if devs is None else devs[lo:hi])
            lo = hi
        pending.clear()
        size = 0

    for s in series:
        ws = replay_window_set(m, len(s.ts))
        values = s.values if rows is None else apply_rows(s.values, rows)
        win_ts, wins = window_series(ws, s.asset, s.ts, values)
        pending.append((s, win_ts, wins))
        size += len(win_ts)
        if size >= pool:
            yield from flush()
    yield from flush()


def replay_asset(bundle: Bundle, scorer: Scorer, spec: RuleSpec, asset: str,
                 ts: np.ndarray, values: np.ndarray, labels: np.ndarray | None,
                 eval_from: float = float("-inf")) -> AssetResult:
    """Window, score and alert one asset; rows before ``eval_from`` are not evaluated."""
    return next(replay(bundle, scorer, spec, [Series(asset, ts, values, labels, eval_from)]))


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
