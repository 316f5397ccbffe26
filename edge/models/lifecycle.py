"""The running agent's side of the model registry: hot swap, shadow, canary, rollback.

The registry (files under ``<state_dir>/models``) is the single source of truth:
``forewarn model promote`` on the command line, the API, or Ansible change its
pointers, and :meth:`ModelLifecycle.poll` (called by the agent's supervisor every
couple of seconds) makes the running pipeline follow. A new ACTIVE version is
loaded, verified and self-tested *before* the swap; if that fails, the old model
keeps scoring. A CANDIDATE runs beside it in shadow or canary mode; a canary
verdict clears the candidate (audited) and raises the IT-facing rollback counter.
With ``rollout = "staged"`` (the default) the candidate walks the stages of
:mod:`edge.models.stages` instead (:class:`~edge.models.walker.Walker`): each
stage a fresh judge, a new share of assets, and promotion at the end.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.core.audit import AuditLog
from edge.core.config import BundleConfig
from edge.core.errors import ConfigError, ForewarnError
from edge.core.metrics import Metrics
from edge.models.bundle import Bundle, Manifest, load_bundle
from edge.models.canary import CanaryJudge
from edge.models.infer import Scorer, scorer_for
from edge.models.registry import Registry
from edge.models.rollout import Mode, Rollout
from edge.models.stages import Evidence, Verdicts, WalkState, no_verdicts
from edge.models.walker import Walker
from edge.models.walkstore import WalkStore
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
        return load_bundle(cfg.path, cfg.trusted_keys, allow_unsigned=cfg.allow_unsigned,
                           site_keys=cfg.site_keys), None
    registry = Registry(models, cfg.trusted_keys, cfg.allow_unsigned, audit=audit,
                        intra_op_threads=cfg.intra_op_threads, site_keys=cfg.site_keys)
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
                 metrics: Metrics, on_activate: Callable[[Bundle, Scorer], None],
                 events: Callable[[dict[str, Any]], None] | None = None,
                 verdicts: Verdicts = no_verdicts) -> None:
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
        self._scorer: Scorer | None = None  # the candidate's, kept across its stages
        self._stage = -1  # the walk's stage the pipeline's rollout was built for
        self.walker: Walker | None = None
        if cfg.rollout == "staged":
            self.walker = Walker(registry, self.name, cfg, metrics, events=events,
                                 verdicts=verdicts)

    @property
    def store(self) -> WalkStore:
        """Where walks are kept (the API's person controls use it, staged or not)."""
        return WalkStore(self.registry) if self.walker is None else self.walker.store

    def _walk_lock(self) -> AbstractContextManager[None]:
        return nullcontext() if self.walker is None else self.walker.locked()

    def metric_state(self) -> list[StateRow]:
        """The running rollout's figures (none without a candidate)."""
        rollout = self.pipeline.rollout
        return rollout.metric_state() if rollout is not None else []

    def poll(self) -> None:
        with self._lock:
            try:
                with self._walk_lock():  # a person's step and ours never interleave
                    self._sync()
                    if self.walker is None:
                        self._judge()
                    else:
                        self._walk()
            except ForewarnError as exc:
                log.error("model lifecycle: %s", exc)

    def close(self) -> None:
        """At stop: the hold run since the last save is kept for the next start."""
        if self.walker is not None:
            with self._lock:
                try:
                    self.walker.flush()
                except ForewarnError as exc:
                    log.error("model lifecycle: %s", exc)

    def _sync(self) -> None:
        ptr = self.registry.pointers(self.name)
        if ptr.active and ptr.active != self.active:
            self._activate(ptr.active)
        if ptr.candidate != self.candidate:
            self._set_candidate(ptr.candidate)

    def _load(self, version: str) -> tuple[Bundle, Scorer]:
        bundle = self.registry.load(self.name, version)  # verifies the signature again
        return bundle, scorer_for(bundle, intra_op_threads=self.cfg.intra_op_threads)

    def _activate(self, version: str) -> None:
        try:
            bundle, scorer = self._load(version)
            # Refuses (before changing anything) e.g. an alert policy the agent config's
            # overrides contradict.
            self.on_activate(bundle, scorer)
        except ForewarnError as exc:
            log.error("not switching to %s/%s, the current model keeps scoring: %s",
                      self.name, version, exc)
            self.registry.audit.record("agent", "model.activate", name=self.name,
                                       version=version, result="refused", error=str(exc))
            self.active = version  # do not retry a broken bundle every poll
            return
        log.info("now scoring with %s (was %s)", bundle.ident, f"{self.name}/{self.active}")
        self.active = version
        self.metrics.model_swaps.inc()

    def _set_candidate(self, version: str | None) -> None:
        if self.walker is not None and self.candidate is not None:
            how = "cleared" if version is None else f"replaced by {version}"
            self.walker.end(self.candidate, f"candidate {how} outside the staged rollout")
        self.candidate, self._scorer, self._stage = version, None, -1
        if version is None:
            self.pipeline.set_rollout(None, self.pipeline.breached)
            return
        try:
            bundle, scorer = self._load(version)
        except ForewarnError as exc:
            log.error("candidate %s/%s refused: %s", self.name, version, exc)
            self.registry.audit.record("agent", "model.candidate", name=self.name,
                                       version=version, result="refused", error=str(exc))
            return
        if bundle.manifest.kind == "template":
            # Its assets have no parameters learned for it (site parameters name the
            # exact template they were learned for), so it would score nothing and no
            # stage could ever be judged: refuse it now, saying so, rather than hang.
            why = ("a template bundle is not walked as a candidate: its assets have no "
                   "parameters learned for it; promote it (forewarn model promote) and "
                   "its assets commission again")
            log.error("candidate %s refused: %s", bundle.ident, why)
            self.registry.audit.record("agent", "model.candidate", name=self.name,
                                       version=version, result="refused", error=why)
            return
        active = self.pipeline.scorer.bundle.manifest
        if not same_grid(active, bundle.manifest):
            log.error("candidate %s needs another window grid than %s; refused",
                      bundle.ident, self.pipeline.scorer.ident)
            return
        self._scorer = scorer
        if self.walker is not None:
            self._stage_rollout(self.walker.begin(version))
            return
        c = self.cfg
        mode: Mode = "canary" if c.rollout == "canary" else "shadow"
        rollout = Rollout(scorer, mode, share=c.canary_share, salt=self.name,
                          judge=self._judge_of())
        self.pipeline.set_rollout(rollout, self.pipeline.breached)
        log.info("candidate %s runs in %s mode", bundle.ident, c.rollout)

    def _judge_of(self) -> CanaryJudge:
        c = self.cfg
        return CanaryJudge(max_error_ratio=c.canary_max_error_ratio,
                           p99_bound_s=c.canary_p99_bound_s,
                           alert_rate_factor=c.canary_alert_rate_factor,
                           min_windows=c.canary_min_windows)

    def _stage_rollout(self, st: WalkState) -> None:
        """The pipeline's rollout for the walk's current stage: its share, a fresh judge."""
        stage = st.current
        if st.status != "running" or stage is None or self._scorer is None:
            return
        if st.stage == self._stage:
            return
        rollout = Rollout(self._scorer, stage.mode, share=stage.share, salt=self.name,
                          judge=self._judge_of())
        self.pipeline.set_rollout(rollout, self.pipeline.breached)
        self._stage = st.stage
        log.info("candidate %s: %s (stage %d of %d), hold %g s", st.ident, stage.label,
                 st.stage + 1, len(st.stages), stage.hold_s)

    def _walk(self) -> None:
        assert self.walker is not None
        rollout = self.pipeline.rollout
        evidence = None
        if rollout is not None and self.candidate is not None and self._stage >= 0:
            cand = rollout.judge.groups["candidate"]
            evidence = Evidence(windows=cand.windows, verdict=rollout.judge.verdict())
        step = self.walker.tick(self.candidate, evidence)
        st = self.walker.state
        if st is None and self.candidate is not None and self._scorer is not None:
            # The walk file was deleted or unreadable: walk again, from the first stage.
            self._stage = -1
            self._stage_rollout(self.walker.begin(self.candidate))
            return
        if step is not None and step.event in ("rolled_back", "aborted"):
            self.pipeline.set_rollout(None, self.pipeline.breached)
            self.candidate, self._scorer, self._stage = None, None, -1
        elif step is not None and step.event == "promoted":
            self.candidate = None  # the promotion cleared it: no "ended" for it
            self._sync()  # the hot swap now, not at the next poll
            self.pipeline.set_rollout(None, self.pipeline.breached)
        elif st is not None and st.version == self.candidate:
            self._stage_rollout(st)

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
        rollbacks = self.rollbacks if self.walker is None else self.walker.rollbacks
        out: dict[str, Any] = {"name": self.name, "active": self.active,
                               "candidate": self.candidate, "rollbacks": rollbacks[-20:],
                               "walk": None if self.walker is None else self.walker.snapshot()}
        if rollout is not None:
            out["mode"] = rollout.mode
            out["shadow"] = rollout.shadow.snapshot() if rollout.mode == "shadow" else None
            out["canary"] = rollout.judge.snapshot() if rollout.mode == "canary" else None
        return out
