"""The running agent's side of the model registry: hot swap, shadow, canary, rollback.

The registry (files under ``<state_dir>/models``) is the single source of truth:
``forewarn model promote`` on the command line, the API, or Ansible change its
pointers, and :meth:`ModelLifecycle.poll` (called by the agent's supervisor every
couple of seconds) makes the running pipeline follow. A new ACTIVE version is
loaded, verified and self-tested *before* the swap; if that fails, the old model
keeps scoring. A CANDIDATE runs beside it in shadow or canary mode; a canary
verdict clears the candidate (audited) and raises the IT-facing rollback counter.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.core.audit import AuditLog
from edge.core.config import BundleConfig
from edge.core.errors import ConfigError, ForewarnError
from edge.core.metrics import Metrics
from edge.models.bundle import Bundle, Manifest, load_bundle
from edge.models.canary import CanaryJudge
from edge.models.infer import Scorer
from edge.models.registry import Registry
from edge.models.rollout import Rollout
from edge.scoring.pipeline import Pipeline

if TYPE_CHECKING:
    from edge.core.metrics import StateRow

log = logging.getLogger(__name__)


def initial_bundle(cfg: BundleConfig, models: Path,
                   audit: AuditLog | None = None) -> tuple[Bundle, Registry | None]:
    """The bundle to start with, and the registry when ``bundle.name`` is set.

    Without a name, ``bundle.path`` is loaded as is. With one, the registry under
    ``models`` decides (its ACTIVE version); ``bundle.path`` is installed first when
    the registry has no version of that name yet.
    """
    if cfg.name is None:
        assert cfg.path is not None
        return load_bundle(cfg.path, cfg.trusted_keys, allow_unsigned=cfg.allow_unsigned), None
    registry = Registry(models, cfg.trusted_keys, cfg.allow_unsigned, audit=audit,
                        intra_op_threads=cfg.intra_op_threads)
    if not registry.pointers(cfg.name).active:
        if cfg.path is None:
            raise ConfigError(f"bundle.name = {cfg.name!r}: the registry under {models} has "
                              "no version of it and no bundle.path is given to install")
        registry.install(cfg.path, actor="agent")
    return registry.load(cfg.name), registry


def same_grid(a: Manifest, b: Manifest) -> bool:
    return (a.signal_names == b.signal_names and a.sample_period_s == b.sample_period_s
            and a.window == b.window and a.hop == b.hop)


class ModelLifecycle:
    def __init__(self, registry: Registry, cfg: BundleConfig, pipeline: Pipeline,
                 metrics: Metrics, on_activate: Callable[[Bundle, Scorer], None]) -> None:
        assert cfg.name is not None
        self.registry = registry
        self.name = cfg.name
        self.cfg = cfg
        self.pipeline = pipeline
        self.metrics = metrics
        self.on_activate = on_activate
        ptr = registry.pointers(self.name)
        self.active = ptr.active
        self.candidate: str | None = None
        self.rollbacks: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def metric_state(self) -> list[StateRow]:
        """The running rollout's figures (none without a candidate)."""
        rollout = self.pipeline.rollout
        return rollout.metric_state() if rollout is not None else []

    def poll(self) -> None:
        with self._lock:
            try:
                ptr = self.registry.pointers(self.name)
                if ptr.active and ptr.active != self.active:
                    self._activate(ptr.active)
                if ptr.candidate != self.candidate:
                    self._set_candidate(ptr.candidate)
                self._judge()
            except ForewarnError as exc:
                log.error("model lifecycle: %s", exc)

    def _load(self, version: str) -> tuple[Bundle, Scorer]:
        bundle = self.registry.load(self.name, version)  # verifies the signature again
        return bundle, Scorer(bundle, intra_op_threads=self.cfg.intra_op_threads)

    def _activate(self, version: str) -> None:
        try:
            bundle, scorer = self._load(version)
        except ForewarnError as exc:
            log.error("not switching to %s/%s, the current model keeps scoring: %s",
                      self.name, version, exc)
            self.active = version  # do not retry a broken bundle every poll
            return
        self.on_activate(bundle, scorer)
        log.info("now scoring with %s (was %s)", bundle.ident, f"{self.name}/{self.active}")
        self.active = version
        self.metrics.model_swaps.inc()

    def _set_candidate(self, version: str | None) -> None:
        self.candidate = version
        if version is None:
            self.pipeline.set_rollout(None, self.pipeline.breached)
            return
        try:
            bundle, scorer = self._load(version)
        except ForewarnError as exc:
            log.error("candidate %s/%s refused: %s", self.name, version, exc)
            return
        active = self.pipeline.scorer.bundle.manifest
        if not same_grid(active, bundle.manifest):
            log.error("candidate %s needs another window grid than %s; refused",
                      bundle.ident, self.pipeline.scorer.ident)
            return
        c = self.cfg
        judge = CanaryJudge(max_error_ratio=c.canary_max_error_ratio,
                            p99_bound_s=c.canary_p99_bound_s,
                            alert_rate_factor=c.canary_alert_rate_factor,
                            min_windows=c.canary_min_windows)
        rollout = Rollout(scorer, c.rollout, share=c.canary_share, salt=self.name, judge=judge)
        self.pipeline.set_rollout(rollout, self.pipeline.breached)
        log.info("candidate %s runs in %s mode", bundle.ident, c.rollout)

    def _judge(self) -> None:
        rollout = self.pipeline.rollout
        if rollout is None or self.candidate is None:
            return
        verdict = rollout.verdict()
        if verdict is None:
            return
        version = self.candidate
        self.registry.set_candidate(self.name, None, actor="canary",
                                    reason=f"automatic rollback: {verdict}")
        self.pipeline.set_rollout(None, self.pipeline.breached)
        self.candidate = None
        self.rollbacks.append({"version": version, "rule": verdict.rule,
                               "reason": verdict.reason})
        self.metrics.canary_rollbacks.labels(verdict.rule).inc()
        log.error("IT ALERT: canary %s/%s rolled back automatically: %s", self.name, version,
                  verdict)

    def snapshot(self) -> dict[str, Any]:
        rollout = self.pipeline.rollout
        out: dict[str, Any] = {"name": self.name, "active": self.active,
                               "candidate": self.candidate, "rollbacks": self.rollbacks[-20:]}
        if rollout is not None:
            out["mode"] = rollout.mode
            out["shadow"] = rollout.shadow.snapshot() if rollout.mode == "shadow" else None
            out["canary"] = rollout.judge.snapshot() if rollout.mode == "canary" else None
        return out
