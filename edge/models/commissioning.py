"""Each asset's commissioning state under a template bundle: learning, ready, insufficient.

An asset is **learning** until the learner (``forewarn commission``, its own
process) installs its site parameters; while learning its windows are counted,
not scored, so it raises no model alert (limit and sensor-fault alerts do not
depend on the model and keep working). **ready**: its parameters are installed,
verified against the template in use, and its windows score (``verified`` false,
with the reason, when the held-back tail failed and the template flags rather than
refuses). **insufficient_data**: the learner refused its commissioning data and said
why.

Two small files under ``<state_dir>/commissioning/``, each with one writer:

* ``assets.json`` (the agent): per asset, the start of its first window under the
  template (``since``, data time: the learner reads history from there) and the
  windows seen while learning (``progress`` = windows / a gap-free period's).
* ``verdicts.json`` (the learner): the assets it refused, with the reason.

>>> p = Progress(since=100.0, windows=195)
>>> round(p.share(390), 2)
0.5
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.core.errors import ForewarnError
from edge.core.metrics import Metrics
from edge.models.bundle import Bundle
from edge.models.infer import TemplateScorer
from edge.models.sitekey import SiteParams
from edge.models.sitestore import SiteParamsRegistry
from edge.scoring.window import ReadyWindow

log = logging.getLogger(__name__)

DIR = "commissioning"
ASSETS_FILE = "assets.json"
VERDICTS_FILE = "verdicts.json"
STATES = ("learning", "ready", "insufficient_data")


@dataclass
class Progress:
    since: float  # data time of the first slot of the asset's first window
    windows: int = 0
    last_seen: float | None = None  # wall clock of its last window (not saved)

    def share(self, needed: int) -> float:
        return min(1.0, self.windows / max(1, needed))


def paths(state_dir: Path) -> tuple[Path, Path]:
    d = Path(state_dir) / DIR
    return d / ASSETS_FILE, d / VERDICTS_FILE


def read_json(path: Path) -> dict[str, Any]:
    """A state file's content; {} when absent, unreadable or not an object (logged)."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); treated as empty", path, exc)
        return {}
    return doc if isinstance(doc, dict) else {}


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Atomically (temporary file, fsync, rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Commissioning:
    """The commissioning state of every asset under one template; feeds its scorer.

    ``on_unscored`` runs in the hot loop (one lock per batch); :meth:`poll` in the
    supervisor: it loads newly installed parameter sets (verified and self-tested
    before they score), reads the learner's verdicts and saves ``assets.json``.
    """

    def __init__(self, template: Bundle, scorer: TemplateScorer, sites: SiteParamsRegistry,
                 state_dir: Path, metrics: Metrics | None = None) -> None:
        spec = template.manifest.commissioning
        if spec is None:
            raise ForewarnError(f"{template.ident} is not a template bundle")
        m = template.manifest
        self.template, self.scorer, self.sites, self.metrics = template, scorer, sites, metrics
        self.spec = spec
        self.needed = spec.windows_needed(m.window, m.hop)
        self._span = (m.window - 1) * m.sample_period_s
        self.assets_path, self.verdicts_path = paths(state_dir)
        self._lock = threading.Lock()
        self._seen: dict[str, Progress] = {}
        self._dirty = False
        self._ready: dict[str, SiteParams] = {}
        self._pointers: dict[str, str] = {}
        self._refused: dict[str, str] = {}  # asset -> why its installed set was not used
        self._verdicts: dict[str, dict[str, Any]] = {}
        self._verdict_stamp: tuple[float, int] | None = None
        doc = read_json(self.assets_path)
        if doc.get("template") == template.ident:
            for a, rec in (doc.get("assets") or {}).items():
                try:
                    self._seen[str(a)] = Progress(float(rec["since"]), int(rec["windows"]))
                except (KeyError, TypeError, ValueError):
                    log.warning("%s: asset %r has no valid since/windows; starts again",
                                self.assets_path, a)
        scorer.on_unscored = self.on_unscored

    @property
    def ident(self) -> str:
        return self.template.ident

    # -- hot loop -----------------------------------------------------------------
    def on_unscored(self, windows: list[ReadyWindow]) -> None:
        now = time.time()
        with self._lock:
            seen = self._seen
            for w in windows:
                p = seen.get(w.asset)
                if p is None:
                    p = seen[w.asset] = Progress(w.end_ts - self._span)
                p.windows += 1
                p.last_seen = now
            self._dirty = True
        if self.metrics is not None:
            self.metrics.windows_skipped.labels("learning").inc(len(windows))

    # -- supervisor ---------------------------------------------------------------
    def poll(self) -> None:
        """Follow the registry's parameter sets and the learner's verdicts; save progress."""
        try:
            pointers = self.sites.pointers(self.template.manifest.name)
        except (ForewarnError, OSError) as exc:
            log.error("commissioning: cannot read the site parameters: %s", exc)
            pointers = self._pointers
        if pointers != self._pointers:
            self._follow(pointers)
        self._read_verdicts()
        self.save()
        if self.metrics is not None:
            counts, unverified = self.tally(self.assets())
            for state, n in counts.items():
                self.metrics.commissioning_assets.labels(state).set(n)
            self.metrics.commissioning_unverified.set(unverified)

    def _follow(self, pointers: dict[str, str]) -> None:
        ready = {a: sp for a, sp in self._ready.items() if pointers.get(a) == sp.manifest.version}
        for asset, version in pointers.items():
            if asset in ready or self._pointers.get(asset) == version:
                continue  # unchanged, or already refused at this version
            try:
                ready[asset] = self.sites.load(self.template, asset, version, self.scorer)
                self._refused.pop(asset, None)
                log.info("asset %s: site parameters %s installed; it scores from now on",
                         asset, version)
            except ForewarnError as exc:
                self._refused[asset] = str(exc)
                log.error("asset %s: site parameters %s refused, it keeps learning: %s",
                          asset, version, exc)
                self._audit_refusal(asset, version, str(exc))
        for asset in set(self._ready) - set(ready):
            log.info("asset %s: site parameters removed; it learns again", asset)
        self._pointers = dict(pointers)
        self._ready = ready
        self.scorer.set_params({a: sp.params for a, sp in ready.items()})

    def _audit_refusal(self, asset: str, version: str, error: str) -> None:
        # Once per version: a refused set is not tried again until its pointer moves.
        try:
            self.sites.audit.record("agent", "model.site_params.activate", template=self.ident,
                                    asset=asset, version=version, result="refused",
                                    error=error)
        except ForewarnError as exc:  # the audit's disk: the refusal is in the log above
            log.error("commissioning: cannot audit the refusal: %s", exc)

    def _read_verdicts(self) -> None:
        try:
            st = self.verdicts_path.stat()
            stamp: tuple[float, int] | None = (st.st_mtime, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._verdict_stamp:
            return
        self._verdict_stamp = stamp
        doc = read_json(self.verdicts_path)
        mine = (doc.get("templates") or {}).get(self.ident) or {}
        self._verdicts = {str(a): v for a, v in mine.items() if isinstance(v, dict)}

    def save(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            doc = {"template": self.ident, "assets": {
                a: {"since": p.since, "windows": p.windows} for a, p in self._seen.items()}}
            self._dirty = False
        try:
            write_json(self.assets_path, doc)
        except OSError as exc:
            log.warning("%s: cannot save commissioning progress: %s", self.assets_path, exc)
            self._dirty = True

    # -- views --------------------------------------------------------------------
    def asset(self, name: str) -> dict[str, Any]:
        with self._lock:
            p = self._seen.get(name)
            p = Progress(p.since, p.windows, p.last_seen) if p else None
        sp = self._ready.get(name)
        verdict = self._verdicts.get(name)
        out: dict[str, Any] = {
            "asset": name, "since": p.since if p else None,
            "windows": p.windows if p else 0, "windows_needed": self.needed,
            "progress": 1.0 if sp else round(p.share(self.needed), 4) if p else 0.0,
            "params_version": sp.manifest.version if sp else None, "reason": None,
            "last_seen": p.last_seen if p else None}
        if sp is not None:
            out["state"] = "ready"
            out["evidence"] = ev = dict(sp.manifest.evidence)
            # A template that flags (rather than refuses) a failed verification installs
            # the set; the crew must see that its alerts rest on an unverified normal.
            out["verified"] = ev.get("verification") != "failed"
            if not out["verified"]:
                out["reason"] = str(ev.get("verification_failure") or "verification failed")
        elif verdict is not None and verdict.get("state") == "insufficient_data":
            out["state"] = "insufficient_data"
            out["reason"] = str(verdict.get("reason", ""))
        else:
            out["state"] = "learning"
            if name in self._refused:
                out["reason"] = "installed parameters refused: " + self._refused[name]
            elif p is not None and p.windows >= self.needed:
                out["reason"] = "commissioning data complete; waiting for the learner"
        return out

    def assets(self) -> list[dict[str, Any]]:
        with self._lock:
            names = set(self._seen)
        return [self.asset(a) for a in sorted(names | set(self._ready) | set(self._verdicts))]

    @staticmethod
    def tally(items: list[dict[str, Any]]) -> tuple[dict[str, int], int]:
        """Assets by state, and the ready ones installed flagged (verification failed)."""
        counts = dict.fromkeys(STATES, 0)
        for a in items:
            counts[a["state"]] += 1
        return counts, sum(1 for a in items if a.get("verified") is False)

    def snapshot(self) -> dict[str, Any]:
        s = self.spec
        items = self.assets()
        counts, unverified = self.tally(items)
        return {"template": self.ident, "rows": s.rows, "windows_needed": self.needed,
                "holdout_share": s.holdout_share, "tail_alarm_budget": s.tail_alarm_budget,
                "on_verification_failure": s.on_verification_failure,
                "counts": counts, "unverified": unverified, "assets": items}


def with_commissioning(rows: list[dict[str, Any]], view: dict[str, Any],
                       stale_after_s: float, now: float | None = None
                       ) -> list[dict[str, Any]]:
    """The API's asset rows with each asset's commissioning state (``commissioning``).

    A learning asset has no score yet, so the alert manager does not list it; it
    gets a row of its own here, its data age from its last counted window.

    >>> view = {"assets": [{"asset": "p1", "state": "learning", "progress": 0.5,
    ...                     "reason": None, "last_seen": 95.0}]}
    >>> r = with_commissioning([], view, 300.0, now=100.0)[0]
    >>> r["asset"], r["freshness"], r["commissioning"]["progress"]
    ('p1', 'fresh', 0.5)
    """
    now = time.time() if now is None else now
    by_asset = {a["asset"]: a for a in view.get("assets", [])}
    out = []
    for r in rows:
        c = by_asset.pop(r["asset"], None)
        out.append({**r, "commissioning": _brief(c) if c else None})
    for name, c in sorted(by_asset.items()):
        seen = c.get("last_seen")
        age = None if seen is None else max(0.0, now - seen)
        out.append({"asset": name, "state": "normal", "severity": "none", "alert_id": None,
                    "last_score": None, "last_data_ts": None, "last_seen": seen,
                    "age_s": age, "maintenance": False, "model": view.get("template", ""),
                    "freshness": ("no data" if age is None else
                                  "fresh" if age <= stale_after_s else "stale"),
                    "stale": age is not None and age > stale_after_s,
                    "stale_reason": "silent" if age is not None and age > stale_after_s
                    else None, "dead_since": None, "commissioning": _brief(c)})
    return sorted(out, key=lambda r: r["asset"])


def _brief(c: dict[str, Any]) -> dict[str, Any]:
    return {k: c.get(k) for k in ("state", "progress", "reason", "windows", "windows_needed",
                                  "params_version", "verified")}
