"""Scoring with a candidate model beside the active one: shadow or canary.

Shadow: every window is scored by both; only the active model's scores reach the
alert rules, the candidate's go to a :class:`~edge.models.shadow.ShadowComparator`
(score correlation, would-have-opened vs opened, latency of both).

Both feed a :class:`~edge.models.canary.CanaryJudge` (in shadow: both models on the
same windows), which a staged walk (:mod:`edge.models.stages`) consults.

Canary: a stable share of assets (sha256 of the asset id, so the same assets stay
on the candidate across restarts) is scored by the candidate *instead* of the
active model; a :class:`~edge.models.canary.CanaryJudge` compares error rate, p99
latency and alert rate of both groups and, on a verdict, the agent rolls the
candidate back. Windows the candidate fails on are scored by the active model,
so a broken candidate never loses a window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from edge.models.canary import CanaryJudge, RollbackReason, canary_assets
from edge.models.infer import ScoredWindow, Scorer
from edge.models.shadow import ShadowComparator
from edge.scoring.window import ReadyWindow

if TYPE_CHECKING:
    from edge.core.metrics import StateRow

Mode = Literal["shadow", "canary"]


@dataclass
class Rollout:
    candidate: Scorer
    mode: Mode
    share: float = 0.1
    salt: str = ""
    judge: CanaryJudge = field(default_factory=CanaryJudge)
    shadow: ShadowComparator = field(default_factory=ShadowComparator)
    _on_canary: dict[str, bool] = field(default_factory=dict)

    def metric_state(self) -> list[StateRow]:
        """A candidate is running; in shadow mode, how the two models compare so far."""
        out: list[StateRow] = [("forewarn_candidate_active", "1 while a candidate model "
                                "runs (shadow or canary)", "gauge", 1.0)]
        snap = self.shadow.snapshot() if self.mode == "shadow" else None
        if snap:
            alerts, lat = snap["alerts"], snap["latency_s"]
            out += [
                ("forewarn_shadow_windows_total", "Windows scored by both models", "counter",
                 float(snap["compared"])),
                ("forewarn_shadow_score_correlation", "Pearson correlation of active and "
                 "candidate scores", "gauge", float(snap["correlation"] or 0.0)),
                ("forewarn_shadow_alert_agreement", "Share of windows where both models agree "
                 "on the alert condition", "gauge", float(alerts["agreement"] or 0.0)),
                ("forewarn_shadow_active_latency_p99_seconds", "p99 per-window inference time, "
                 "active model", "gauge", float(lat["active"]["p99"] or 0.0)),
                ("forewarn_shadow_candidate_latency_p99_seconds", "p99 per-window inference "
                 "time, candidate model", "gauge", float(lat["candidate"]["p99"] or 0.0)),
            ]
        return out

    def is_canary(self, asset: str) -> bool:
        v = self._on_canary.get(asset)
        if v is None:
            v = self._on_canary[asset] = canary_assets(asset, self.share, self.salt)
        return v

    def score(self, ready: list[ReadyWindow], active: Scorer, batch_max: int,
              breached: object) -> list[ScoredWindow]:
        """Scores for the sinks; ``breached(score) -> bool`` is the alert condition."""
        if self.mode == "shadow":
            return self._shadow(ready, active, batch_max, breached)
        return self._canary(ready, active, batch_max, breached)

    def verdict(self) -> RollbackReason | None:
        """The canary's verdict (a plain shadow run is never rolled back on its own)."""
        return self.judge.verdict() if self.mode == "canary" else None

    def _shadow(self, ready: list[ReadyWindow], active: Scorer, batch_max: int,
                breached: object) -> list[ScoredWindow]:
        t0 = time.perf_counter()
        main = active.score(ready, batch_max)
        t1 = time.perf_counter()
        try:
            cand = self.candidate.score(ready, batch_max)
        except Exception:  # a failing candidate is data for the comparison, nothing more
            cand = [ScoredWindow(w.asset, w.end_ts, float("nan"), None, self.candidate.ident)
                    for w in ready]
        t2 = time.perf_counter()
        lat_a, lat_c = (t1 - t0) / max(1, len(ready)), (t2 - t1) / max(1, len(ready))
        alerts = {"stable": 0, "candidate": 0}
        errors = {"stable": 0, "candidate": 0}
        for a, c in zip(main, cand, strict=True):
            a_hit, c_hit = bool(breached(a.score)), bool(breached(c.score))  # type: ignore[operator]
            self.shadow.update(a.asset, a.ts, a.score, c.score, lat_a, lat_c, a_hit, c_hit)
            alerts["stable"] += a_hit
            alerts["candidate"] += c_hit and np.isfinite(c.score)
            errors["stable"] += not np.isfinite(a.score)
            errors["candidate"] += not np.isfinite(c.score)
        # The same judge as a canary's, on the same windows: a staged walk fails its
        # shadow stage on what the candidate would have done.
        self.judge.update("stable", len(main), errors["stable"], [t1 - t0], alerts["stable"])
        self.judge.update("candidate", len(cand), errors["candidate"], [t2 - t1],
                          alerts["candidate"])
        return main

    def _canary(self, ready: list[ReadyWindow], active: Scorer, batch_max: int,
                breached: object) -> list[ScoredWindow]:
        on = [w for w in ready if self.is_canary(w.asset)]
        off = [w for w in ready if not self.is_canary(w.asset)]
        out: list[ScoredWindow] = []
        if off:
            t0 = time.perf_counter()
            stable = active.score(off, batch_max)
            lat = time.perf_counter() - t0
            scores = np.array([s.score for s in stable])
            self.judge.update("stable", len(stable), int((~np.isfinite(scores)).sum()), [lat],
                              sum(bool(breached(s)) for s in scores.tolist()))  # type: ignore[operator]
            out.extend(stable)
        if on:
            t0 = time.perf_counter()
            try:
                cand = self.candidate.score(on, batch_max)
            except Exception:
                cand = []
            lat = time.perf_counter() - t0
            good = [s for s in cand if np.isfinite(s.score)]
            errors = len(on) - len(good)
            self.judge.update("candidate", len(on), errors, [lat],
                              sum(bool(breached(s.score)) for s in good))  # type: ignore[operator]
            out.extend(good)
            if errors:
                # The active model scores what the candidate could not: nothing is lost.
                done = {(s.asset, s.ts) for s in good}
                out.extend(active.score([w for w in on if (w.asset, w.end_ts) not in done],
                                        batch_max))
        return out
