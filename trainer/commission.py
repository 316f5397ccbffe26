"""The commissioning learner: each learning asset's parameters from its own first rows.

For one asset under a template bundle (:mod:`edge.models.template`):

1. its history since the start of its first window under the template (the
   agent's ``commissioning/assets.json``), read from the Parquet store and its
   write-ahead log (:func:`edge.history.history.read_history`: read-only, the
   agent keeps writing), one row per timestamp, the template's signals;
2. nothing until the store holds more than ``rows`` rows (the next row's time
   bounds the period); then the first ``rows`` rows are the commissioning period;
3. refused as ``insufficient_data`` (with the reason) when a signal never reads or
   never changes in it, or gaps leave fewer than ``min_window_share`` of a gap-free
   period's windows;
4. windows cut as the agent cuts them (its range rule, :class:`WindowSet`, gap rule),
   features by the template's *own* feature subgraph through onnxruntime, then the
   PCA fit of the full family (:func:`trainer.template.fit_params`): the same fit
   ``forewarn evaluate``'s SKAB protocol makes on a file's first rows;
5. verified: the same fit on the first ``1 - holdout_share`` of the rows, the
   template graph and the agent's alert rule run on the held-back rest; the alert
   active on more than ``tail_alarm_budget`` of those windows fails verification (its
   commissioning period may not be one normal state). The template's
   ``on_verification_failure`` decides: ``refuse`` makes the asset
   ``insufficient_data`` (no model alerts), ``flag`` installs it marked unverified
   (evidence ``verification: failed``, audited). The installed parameters are the
   fit on all rows (a verified procedure, refit on everything);
6. written with four of its windows as a self-test, signed with the site key, and
   installed through the registry (verified again against the template, audited).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.alerts.rules import RuleSpec
from edge.core.errors import BundleError
from edge.models.bundle import Bundle
from edge.models.commissioning import paths, read_json, write_json
from edge.models.infer import Scorer
from edge.models.signing import Role, key_id
from edge.models.sitekey import SiteParamsManifest, template_ref
from edge.models.sitekey import write_site_params as _write
from edge.models.sitestore import SiteParamsRegistry
from edge.models.template import CommissioningSpec
from edge.scoring.ranges import apply_rows
from trainer.bulkfeed import model_rows, replay_window_set, rule_trace, window_series
from trainer.export import self_test_cases
from trainer.features import compute_features, session
from trainer.template import feature_model_of, fit_params, run_template

ACTOR = "forewarn-commission"
_END_OF_TIME = float(2**33)  # year 2242: the history's day partitions need a finite end
State = Literal["ready", "insufficient_data", "learning", "skipped"]


@dataclass
class Outcome:
    asset: str
    state: State
    detail: str
    version: str | None = None
    evidence: dict[str, float | str] = field(default_factory=dict)


@dataclass(frozen=True)
class Learned:
    params: dict[str, np.ndarray]
    evidence: dict[str, float | str]
    self_test: list[Any]


class Refused(Exception):
    """The commissioning data cannot give this asset a normal (``insufficient_data``)."""


def history_rows(root: Path, asset: str, since: float, signals: list[str],
                 until: float = _END_OF_TIME) -> tuple[np.ndarray, np.ndarray]:
    """``(ts [t], values [signals, t])``: one row per timestamp in ``[since, until)``; a
    signal without a reading at a row's time is NaN there (a reading that never came)."""
    from edge.history.history import read_history

    t = read_history(root, since, until, [asset])
    names = np.asarray(t["signal"].to_numpy(zero_copy_only=False))
    ts = t["ts"].to_numpy()
    vals = t["value"].to_numpy()
    keep = np.isin(names, signals)
    names, ts, vals = names[keep], ts[keep], vals[keep]
    rows = np.unique(ts)
    out = np.full((len(signals), len(rows)), np.nan)
    col = np.searchsorted(rows, ts)
    for i, s in enumerate(signals):
        m = names == s
        out[i, col[m]] = vals[m]
    return rows, out


class Learner:
    """Fits, verifies and packages one template's per-asset parameters."""

    def __init__(self, template: Bundle, rule: RuleSpec) -> None:
        spec = template.manifest.commissioning
        if spec is None:
            raise BundleError(f"{template.ident}: not a template bundle (kind "
                              f"{template.manifest.kind!r}); it has nothing to commission")
        self.template, self.rule = template, rule
        self.spec: CommissioningSpec = spec
        self.m = template.manifest
        self.rows_bounds = model_rows(self.m)
        self.tsess = session(template.model_bytes)
        self.fsess = session(feature_model_of(template.model_bytes))

    def cut(self, asset: str, ts: np.ndarray, values: np.ndarray, until: float
            ) -> tuple[np.ndarray, np.ndarray]:
        """The agent's windows of these rows that end before ``until``."""
        v = values if self.rows_bounds is None else apply_rows(values, self.rows_bounds)
        end, wins = window_series(replay_window_set(self.m, len(ts)), asset, ts, v)
        keep = end < until
        return end[keep], wins[keep]

    def fit(self, windows: np.ndarray) -> tuple[dict[str, np.ndarray], int]:
        f = compute_features(self.fsess, windows)
        p = self.spec.pca
        params, pca = fit_params(f, p.variance, p.quantile)
        return params, pca.n_components

    def learn(self, asset: str, ts: np.ndarray, values: np.ndarray) -> Learned | None:
        """Parameters from the first ``rows`` rows; None while there are not more rows
        than that; :class:`Refused` with the reason for insufficient data."""
        spec, n = self.spec, self.spec.rows
        if len(ts) <= n:
            return None
        ts_c, v_c = ts[:n], values[:, :n]
        for i, s in enumerate(self.m.signal_names):
            x = v_c[i][np.isfinite(v_c[i])]
            if x.size == 0:
                raise Refused(f"no reading of {s} in its first {n} rows")
            if float(np.ptp(x)) == 0.0:
                raise Refused(f"{s} constant at {x[0]:g} over its first {n} rows (a stuck "
                              "or disconnected sensor cannot define normal)")
        _, wins = self.cut(asset, ts_c, v_c, float(ts[n]))
        needed = spec.windows_needed(self.m.window, self.m.hop)
        if len(wins) < spec.min_window_share * needed:
            raise Refused(f"only {len(wins)} complete windows in its first {n} rows (gaps); "
                          f"a gap-free period gives {needed}, at least "
                          f"{math.ceil(spec.min_window_share * needed)} needed")
        split = round(n * (1 - spec.holdout_share))
        _, head = self.cut(asset, ts[:split], values[:, :split], float(ts[split]))
        t_end, tail = self.cut(asset, ts[split:n], values[:, split:n], float(ts[n]))
        if len(head) < 3 or len(tail) < self.rule.n:
            raise Refused(f"too few windows to verify: {len(head)} to fit, {len(tail)} "
                          "held back")
        try:
            head_params, _ = self.fit(head)
            params, k = self.fit(wins)
        except ValueError as exc:
            raise Refused(f"the fit failed: {exc}") from exc
        scores, _ = run_template(self.tsess, tail, head_params)
        share = float(rule_trace(self.rule, t_end, scores).active.mean())
        budget = spec.tail_alarm_budget
        failed = ""
        if share > budget:
            failed = (f"held-back tail: the alert would be active on {share:.0%} of its "
                      f"{len(tail)} windows (budget {budget:.0%}); its first {n} rows may "
                      "not be one normal state")
            if spec.on_verification_failure == "refuse":
                raise Refused(failed)
        pick = np.linspace(0, len(wins) - 1, 4).round().astype(int)
        expected, _ = run_template(self.tsess, wins[pick], params)
        evidence: dict[str, float | str] = {
            "since": float(ts[0]), "until": float(ts[n - 1]), "rows": float(n),
            "windows": float(len(wins)), "windows_needed": float(needed),
            "components": float(k), "holdout_share": spec.holdout_share,
            "tail_windows": float(len(tail)), "tail_alarm_share": round(share, 6),
            "tail_alarm_budget": budget,
            "verification": "failed" if failed else "passed",
            "rule": f"k={self.rule.k} n={self.rule.n} clear_after={self.rule.clear_after}"}
        if failed:
            evidence["verification_failure"] = failed
        return Learned(params, evidence, self_test_cases(wins[pick], expected))

    def package(self, out: Path, asset: str, learned: Learned, key: Ed25519PrivateKey,
                role: Role = "site") -> Path:
        """A site parameters bundle under ``out``, signed by ``key`` in ``role`` (installed
        by the caller)."""
        import hashlib

        # The version names the template too: sets live under the template's name, and
        # a new version of it that fits the same numbers must not meet the old set there.
        ref = template_ref(self.template)
        digest = hashlib.sha256(ref.model_dump_json().encode())
        for k in sorted(learned.params):
            digest.update(k.encode() + learned.params[k].tobytes())
        manifest = {"name": self.m.name, "version": digest.hexdigest()[:12], "asset": asset,
                    "template": ref.model_dump(),
                    "params_sha256": "0" * 64,  # replaced by the writer
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "evidence": learned.evidence,
                    "self_test": [c.model_dump() for c in learned.self_test]}
        SiteParamsManifest.model_validate(manifest)
        return _write(out, manifest, learned.params, key, role=role)


def commission_pass(template: Bundle, rule: RuleSpec, state_dir: Path, key: Ed25519PrivateKey,
                    sites: SiteParamsRegistry, *, assets: list[str] | None = None,
                    retry: bool = False, report: Callable[[int, int, Outcome], None] | None = None,
                    stop: Callable[[], bool] = lambda: False) -> list[Outcome]:
    """One pass over the learning assets; returns what happened to each."""
    state_dir = Path(state_dir)
    learner = Learner(template, rule)
    assets_path, verdicts_path = paths(state_dir)
    progress = read_json(assets_path)
    seen = progress.get("assets") or {} if progress.get("template") == template.ident else {}
    names = sorted(assets) if assets else sorted(seen)
    ready = sites.pointers(template.manifest.name)
    verdicts = read_json(verdicts_path)
    mine = verdicts.setdefault("templates", {}).setdefault(template.ident, {})
    scorer = Scorer(template)
    outcomes: list[Outcome] = []
    for i, asset in enumerate(names, 1):
        if stop():
            break
        o = _one(learner, template, state_dir, key, sites, scorer, asset, seen.get(asset),
                 ready, mine, retry)
        outcomes.append(o)
        if o.state == "insufficient_data":
            mine[asset] = {"state": o.state, "reason": o.detail, "ts": time.time()}
            sites.audit.record(ACTOR, "model.site_params.refused", template=template.ident,
                               asset=asset, reason=o.detail, result="insufficient_data")
        elif o.state == "ready":
            mine.pop(asset, None)
            if o.evidence.get("verification") == "failed":
                sites.audit.record(ACTOR, "model.site_params.unverified",
                                   template=template.ident, asset=asset, version=o.version,
                                   reason=str(o.evidence.get("verification_failure", "")),
                                   result="flagged")
        if o.state in ("ready", "insufficient_data"):
            write_json(verdicts_path, verdicts)  # after each asset: the page shows it now
        if report is not None:
            report(i, len(names), o)
    return outcomes


def _one(learner: Learner, template: Bundle, state_dir: Path, key: Ed25519PrivateKey,
         sites: SiteParamsRegistry, scorer: Scorer, asset: str, rec: Any,
         ready: dict[str, str], verdicts: dict[str, Any], retry: bool) -> Outcome:
    if asset in ready and _for_template(sites, template, asset, ready[asset], scorer):
        return Outcome(asset, "skipped", f"parameters {ready[asset]} already installed")
    if asset in verdicts and not retry:
        return Outcome(asset, "skipped", f"refused before: {verdicts[asset].get('reason')} "
                                         "(--retry learns it again)")
    if not isinstance(rec, dict) or "since" not in rec:
        return Outcome(asset, "skipped", "the agent has not seen it under this template")
    since, m = float(rec["since"]), learner.m
    # The period's rows first (twice their gap-free span): an asset the learner reaches
    # late has more history than it needs, and the unit's memory is capped.
    span = 2.0 * (learner.spec.rows + 1) * m.sample_period_s + 3600.0
    ts, values = history_rows(state_dir / "history", asset, since, m.signal_names,
                              since + span)
    if len(ts) <= learner.spec.rows:
        ts, values = history_rows(state_dir / "history", asset, since, m.signal_names)
    try:
        learned = learner.learn(asset, ts, values)
    except Refused as exc:
        return Outcome(asset, "insufficient_data", str(exc))
    if learned is None:
        return Outcome(asset, "learning", f"{len(ts)} of {learner.spec.rows + 1} rows in the "
                                          "history")
    # The role the appliance gives the key: a central key may sign parameters too.
    role = sites.keys().role(key_id(key.public_key())) or "site"
    folder = learner.package(state_dir / "commissioning" / "out", asset, learned, key, role)
    try:
        sp = sites.install(folder, template, actor=ACTOR, scorer=scorer)
    except BundleError as exc:
        return Outcome(asset, "insufficient_data", f"its parameters were refused at install: "
                                                   f"{exc}")
    ev = learned.evidence
    verdict = ("UNVERIFIED, installed flagged (the template says flag)"
               if ev.get("verification") == "failed" else "verified")
    return Outcome(asset, "ready", f"{int(float(ev['components']))} components from "
                   f"{int(float(ev['windows']))} windows; held-back tail: alert on "
                   f"{float(ev['tail_alarm_share']):.0%} of {int(float(ev['tail_windows']))} "
                   f"windows, {verdict}", sp.manifest.version, ev)


def _for_template(sites: SiteParamsRegistry, template: Bundle, asset: str, version: str,
                  scorer: Scorer) -> bool:
    """An installed set counts only when it was learned for this very template."""
    try:
        sites.load(template, asset, version, scorer)
    except BundleError:
        return False
    return True
