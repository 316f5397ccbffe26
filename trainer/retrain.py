"""Retraining on the appliance: local history + the crew's verdicts -> candidate -> gate.

One run (:func:`run`), every step in the audit log (``retrain.started``,
``retrain.gate``, then the registry's ``model.install`` and ``model.candidate``):

1. the active bundle (registry ``ACTIVE``) and the config it was trained with
   (:func:`trainer.refit.config_of`);
2. periods in data time: ``until`` = just after the newest reading, the gate
   period = the last ``gate`` seconds before it (held back), the training period
   = ``train`` seconds before the gate period;
3. per asset, the training rows classed by the alert spans and their verdicts
   (:mod:`trainer.alertspans`) and windowed (:mod:`trainer.refit`); the gate rows
   kept for the replay;
4. the candidate fit in memory (or a given bundle, ``candidate``);
5. the gate (:mod:`trainer.gatereplay`, :mod:`trainer.gate`): report and figures
   written to ``<state_dir>/retrain/<run>/`` whatever the outcome;
6. accepted: the candidate signed with the retrain key (with the gate's figures
   in its manifest), installed into the registry and named ``CANDIDATE`` - the
   staged rollout takes it from there. Refused: nothing is installed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from edge.core.audit import AuditLog
from edge.core.config import AlertRuleConfig
from edge.core.errors import BundleError, ConfigError, StorageError
from edge.history import history_root
from edge.models.bundle import Bundle, Manifest, load_bundle
from edge.models.registry import Registry
from edge.models.signing import key_id, load_private_key, load_trusted_keys
from trainer import gatereplay
from trainer.alertspans import AlertSpan, default_margin, read_spans, row_classes
from trainer.export import write_bundle
from trainer.gate import GateResult, iso, judge
from trainer.gate_report import write_report
from trainer.localhistory import AssetRows, assets_in, newest_ts, read_asset
from trainer.refit import TrainingSet, add_asset, config_of, fit_candidate
from trainer.retrain_record import lineage_of, record_gate, report_context

if TYPE_CHECKING:
    from trainer.config import TrainingConfig

RUNS_KEPT = 20
ALERTS_FILE = "alerts.sqlite"
AUDIT_FILE = "audit.jsonl"


@dataclass
class Plan:
    """What one run does; the command line builds it from flags and ``[retrain]``."""

    state_dir: Path
    model: str
    trusted_keys: list[Path]
    key: Path | None  # signs the candidate; None only for dry runs and given candidates
    train_s: float
    gate_s: float
    allow_unsigned: bool = False
    agent_alerts: AlertRuleConfig | None = None  # the agent's overrides of the bundle's rule
    until: float | None = None
    fault_margin_s: float | None = None
    unjudged: Literal["exclude", "normal"] = "exclude"
    max_windows: int = 50_000
    label_signal: str | None = None
    assets: list[str] | None = None
    actor: str = "retrain"
    trigger: str = "person"
    candidate: Path | None = None  # gate this bundle instead of fitting one
    dry_run: bool = False
    replace_candidate: bool = False


@dataclass
class Outcome:
    accepted: bool
    installed: bool
    run_dir: Path
    report: Path
    figures: dict[str, Any]
    candidate: str  # <name>/<version>
    reasons: list[str] = field(default_factory=list)


def _say(out: TextIO | None, text: str) -> None:
    if out is not None:
        print(f"retrain: {text}", file=out, flush=True)


@contextlib.contextmanager
def _one_at_a_time(d: Path) -> Iterator[None]:
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageError(f"{d}: another retrain is running") from None
        yield
    finally:
        os.close(fd)


def _run_dir(d: Path, version: str) -> Path:
    stem = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{version}"
    for i in range(100):
        p = d / (stem if i == 0 else f"{stem}.{i}")
        try:
            p.mkdir(parents=True)
            return p
        except FileExistsError:
            continue
    raise StorageError(f"{d}: cannot make a run directory {stem}")


def _prune(d: Path, keep: int) -> None:
    runs = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    for p in runs[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def _signing_key(plan: Plan) -> Any:
    if plan.key is None:
        raise ConfigError("no retrain signing key: set retrain.key in the agent config or "
                          "pass --key (the central key is not on site; see "
                          "docs/operations.md, Running and reviewing a retrain)")
    private = load_private_key(plan.key)
    kid = key_id(private.public_key())
    if not plan.allow_unsigned and kid not in load_trusted_keys(plan.trusted_keys):
        raise ConfigError(f"{plan.key}: key {kid} is not among bundle.trusted_keys, so the "
                          "registry would refuse the candidate it signs: add its public "
                          "half to bundle.trusted_keys")
    return private


def run(plan: Plan, progress: TextIO | None = sys.stderr) -> Outcome:
    state = Path(plan.state_dir)
    with _one_at_a_time(state / "retrain"):
        return _run(plan, state, progress)


@dataclass(frozen=True)
class _Periods:
    """The run's periods in data time and the margin cut around confirmed faults."""

    train_from: float
    gate_from: float
    until: float
    margin: float

    @property
    def bounds(self) -> tuple[float, float, float]:
        return self.train_from, self.gate_from, self.until


def _periods(plan: Plan, hist: Path, m: Manifest) -> _Periods:
    newest = newest_ts(hist) if plan.until is None else plan.until
    if newest is None:
        raise ConfigError(f"{hist}: the history is empty: nothing to retrain on")
    until = plan.until if plan.until is not None else newest + m.sample_period_s
    gate_from = until - plan.gate_s
    policy_n = m.alert_policy.n if m.alert_policy is not None else 1
    margin = plan.fault_margin_s if plan.fault_margin_s is not None else \
        default_margin(m.window, m.hop, policy_n, m.sample_period_s)
    return _Periods(gate_from - plan.train_s, gate_from, until, margin)


def _history(plan: Plan, hist: Path, m: Manifest, cfg: TrainingConfig | None,
             spans: list[AlertSpan], p: _Periods, progress: TextIO | None
             ) -> tuple[TrainingSet, list[AssetRows]]:
    """Each asset's kept training rows (with a config to refit) and its gate rows."""
    assets = plan.assets or assets_in(hist, p.train_from, p.until)
    if not assets:
        raise ConfigError(f"{hist}: no asset has history in the periods")
    training, gate_rows = TrainingSet(), []
    warm = gatereplay.warmup_s(m)
    for i, asset in enumerate(assets, 1):
        rows = read_asset(hist, asset, p.train_from, p.until, m.signal_names,
                          m.sample_period_s, plan.label_signal)
        _say(progress, f"history {i}/{len(assets)} {asset}: {rows.readings} readings, "
                       f"{len(rows)} slots")
        if not len(rows):
            training.skipped[asset] = "no readings in the periods"
            continue
        if cfg is not None:
            tr = rows.select(p.train_from, p.gate_from)
            mine = [s for s in spans if s.asset == asset]
            classes = row_classes(tr.ts, mine, margin_s=p.margin, model=m.name,
                                  unjudged=plan.unjudged, labels=tr.label)
            add_asset(training, cfg, tr, classes, n_assets=len(assets),
                      max_windows=plan.max_windows)
        gate_rows.append(rows.select(p.gate_from - warm, p.until))
    return training, gate_rows


def _candidate(plan: Plan, active: Bundle, cfg: TrainingConfig | None, training: TrainingSet,
               spans: list[AlertSpan], p: _Periods, progress: TextIO | None
               ) -> tuple[Bundle, Any, dict[str, Any] | None]:
    """The given candidate bundle, or the active model's config refit on ``training``;
    with the graph and manifest fields of a refit (None for a given one)."""
    m = active.manifest
    if plan.candidate is not None:
        cand = load_bundle(plan.candidate, plan.trusted_keys, allow_unsigned=plan.allow_unsigned)
        if cand.manifest.name != m.name:
            raise BundleError(f"{plan.candidate}: bundle {cand.ident} is not a version of "
                              f"the active model {m.name}")
        return cand, None, None
    assert cfg is not None
    fp = _fingerprint(active, cfg.canonical_json(), training, plan, p.margin, p.bounds)
    lineage = lineage_of(active, plan, training, spans, p.margin, p.bounds)
    _say(progress, f"fitting {cfg.model.family} on {training.windows} windows of "
                   f"{len(training.assets)} assets (rows: {training.rows})")
    fitted, graph, fields = fit_candidate(cfg, m, training, version=fp[:12],
                                          fingerprint=fp, lineage=lineage)
    return fitted.bundle, graph, fields


def _install(plan: Plan, registry: Registry, m: Manifest, run_dir: Path, report: Path,
             fields: dict[str, Any] | None, graph: Any, private: Any, result: GateResult,
             progress: TextIO | None) -> None:
    """Sign (a refit) and install the accepted candidate; make it the candidate."""
    if fields is not None:
        assert graph is not None
        record_gate(fields, result)
        src = write_bundle(run_dir / "bundle", fields, graph, private)
    else:
        assert plan.candidate is not None
        src = plan.candidate
    entry = registry.install(src, actor=plan.actor)
    registry.set_candidate(m.name, entry.version, actor=plan.actor,
                           reason=f"accepted by the replay gate ({report})")
    _say(progress, f"{m.name}/{entry.version} installed and set as the candidate")


def _run(plan: Plan, state: Path, progress: TextIO | None) -> Outcome:
    audit = AuditLog(state / AUDIT_FILE)
    registry = Registry(state / "models", plan.trusted_keys, plan.allow_unsigned, audit)
    active = registry.load(plan.model)
    m = active.manifest
    pending = registry.pointers(m.name).candidate
    if pending is not None and not plan.replace_candidate:
        raise BundleError(f"{m.name}/{pending} is already the candidate (shadow or canary): "
                          "let its rollout finish or clear it (forewarn model candidate "
                          f"{m.name} --clear) first, or pass --replace-candidate")
    private = None if plan.dry_run or plan.candidate is not None else _signing_key(plan)
    cfg = config_of(m) if plan.candidate is None else None
    hist = history_root(state)
    p = _periods(plan, hist, m)
    run_dir = _run_dir(state / "retrain", m.version)
    audit.record(plan.actor, "retrain.started", model=active.ident, trigger=plan.trigger,
                 train=[p.train_from, p.gate_from], gate=[p.gate_from, p.until],
                 fault_margin_s=p.margin, unjudged=plan.unjudged, run=str(run_dir),
                 candidate=None if plan.candidate is None else str(plan.candidate))
    _say(progress, f"{active.ident}: training {iso(p.train_from)} .. {iso(p.gate_from)}, gate "
                   f"{iso(p.gate_from)} .. {iso(p.until)} (data time), fault margin "
                   f"{p.margin:g} s")
    spans = read_spans(state / ALERTS_FILE, p.train_from - p.margin, p.until, plan.assets)
    training, gate_rows = _history(plan, hist, m, cfg, spans, p, progress)
    faults = gatereplay.faults(spans, gate_rows, p.margin, p.gate_from, p.until)
    cand, graph, fields = _candidate(plan, active, cfg, training, spans, p, progress)
    _say(progress, f"gate: replaying {active.ident} and {cand.ident} over {len(gate_rows)} "
                   f"assets, {len(faults)} confirmed faults")
    t_a = gatereplay.traces(active, gatereplay.rule_of(active, plan.agent_alerts), gate_rows,
                            p.gate_from)
    t_c = gatereplay.traces(cand, gatereplay.rule_of(cand, plan.agent_alerts), gate_rows,
                            p.gate_from)
    result = judge(t_a, t_c, faults)
    figures = {**result.figures(), "active_model": active.ident, "candidate_model": cand.ident,
               "gate": [p.gate_from, p.until], "train": [p.train_from, p.gate_from],
               "fault_margin_s": p.margin, "training_rows": training.rows,
               "training_windows": training.windows, "trigger": plan.trigger}
    report = run_dir / "report.html"
    write_report(report, result, t_a, t_c, title=f"forewarn retrain: {cand.ident} against "
                 f"{active.ident}", context=report_context(plan, active, cand, training, figures))
    (run_dir / "gate.json").write_text(json.dumps(figures, indent=1, default=str) + "\n")
    audit.record(plan.actor, "retrain.gate", model=active.ident, candidate=cand.ident,
                 result="accepted" if result.accepted else "refused", reasons=result.reasons,
                 active=result.active.to_dict(len(faults)),
                 candidate_figures=result.candidate.to_dict(len(faults)),
                 report=str(report), dry_run=plan.dry_run)
    _say(progress, ("ACCEPTED" if result.accepted else "REFUSED: " + "; ".join(result.reasons))
         + f" (report {report})")
    installed = result.accepted and not plan.dry_run
    if installed:
        _install(plan, registry, m, run_dir, report, fields, graph, private, result, progress)
    _prune(state / "retrain", RUNS_KEPT)
    return Outcome(result.accepted, installed, run_dir, report, figures, cand.ident,
                   result.reasons)


def _fingerprint(active: Bundle, config: str, training: TrainingSet, plan: Plan,
                 margin: float, periods: tuple[float, float, float]) -> str:
    h = hashlib.sha256(f"{active.ident}\n{active.manifest.model_sha256}\n{config}\n"
                       f"{periods}\n{margin}\n{plan.unjudged}\n".encode())
    h.update(training.digest.hexdigest().encode())
    return h.hexdigest()
