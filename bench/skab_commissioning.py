"""SKAB through commissioning: each labelled file one asset of the live agent.

    python -m bench.skab_commissioning [--data DIR] [--out FILE]

``--data`` is the SKAB data set (GPL-3.0, not shipped), by default its folder
``shared/datasets/skab`` beside the checkout.

The deployed behaviour behind the per-file protocol's figure, end to end:

1. ``forewarn train`` fits the template (``trainer/configs/skab_pca_template.toml``)
   on SKAB's anomaly-free run only, which is not one of the 30 labelled files;
2. a real Mosquitto, the agent in its own process (``forewarn agent``) with that
   template, the site key trusted for parameters, the template's alert rule;
3. every labelled file is one asset, replayed over MQTT (QoS 1, the 30 assets
   interleaved row by row, time-stamped as they were, shifted to last week): its
   first 400 rows are its commissioning period, then the first reading of row 401,
   which tells the learner the period is over, and the replay pauses;
4. ``forewarn commission --once`` (its own process) learns, verifies and installs
   each asset's parameters; the replay waits until the agent reports every asset
   ready or insufficient_data, then publishes the rest;
5. F1 / FAR / MAR from the agent's *model* alert events on MQTT (opened ->
   auto_cleared, in data time) against the labels of every row from the 401st on,
   pooled over the files as ``forewarn evaluate``'s SKAB protocol pools them (a row
   is predicted anomalous while an alert is open); the per-file protocol's figure is
   computed beside it, file by file.

The pause at the boundary stands for a learner that takes no time: in the field the
windows that complete between the end of commissioning and the install are not
scored (they count as learning), minutes in a period of hours. Writes
``bench/results/2026-12-02-skab-commissioning.md`` (and ``.json``) by default.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import free_port, start_broker, wait_for

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "trainer" / "configs" / "skab_pca_template.toml"
# Beside the checkout, or beside the folder of checkouts (a git worktree).
DEFAULT_DATA = next((p for p in (REPO.parent / "shared" / "datasets" / "skab",
                                 REPO.parent.parent / "shared" / "datasets" / "skab")
                     if p.is_dir()), REPO.parent / "shared" / "datasets" / "skab")
DEFAULT_OUT = REPO / "bench" / "results" / "2026-12-02-skab-commissioning.md"
SITE = "site1"
LATENESS_SLOTS = 5  # the agent's ingest.max_lateness_slots (its default, set below)


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Events:
    """Model alert events from the agent's MQTT events topic: asset -> [(event, data_ts)]."""

    def __init__(self, port: int) -> None:
        self.model: dict[str, list[tuple[str, float]]] = {}
        self.other: dict[str, int] = {}
        self.last = time.monotonic()
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-events",
                             protocol=mqtt.MQTTv311)
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(f"forewarn/{SITE}/events/#", qos=1)
        self.c.loop_start()

    def _on(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        e = orjson.loads(msg.payload)
        with self.lock:
            self.last = time.monotonic()
            if e.get("kind") == "model":
                self.model.setdefault(e["asset"], []).append((e["event"], float(e["data_ts"])))
            else:
                self.other[e.get("kind", "?")] = self.other.get(e.get("kind", "?"), 0) + 1

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


class Publisher:
    def __init__(self, port: int) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-replay",
                             protocol=mqtt.MQTTv311)
        self.c.max_inflight_messages_set(1000)
        self.c.max_queued_messages_set(0)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.sent = 0

    def rows(self, assets: list[tuple[str, np.ndarray, np.ndarray, list[str]]],
             lo: int, hi: int, *, signals_of_first: int | None = None,
             skip_first: int = 0) -> int:
        """Rows ``lo:hi`` of every asset, interleaved; the first row may carry only the
        first ``signals_of_first`` signals, or all but the first ``skip_first``."""
        infos, readings = [], 0
        longest = max(len(ts) for _, ts, _, _ in assets)
        for i in range(lo, min(hi, longest)):
            for name, ts, values, signals in assets:
                if i >= len(ts):
                    continue
                pick = range(len(signals))
                if i == lo and signals_of_first is not None:
                    pick = range(signals_of_first)
                elif i == lo and skip_first:
                    pick = range(skip_first, len(signals))
                vals = {signals[j]: float(values[j, i]) for j in pick}
                body = orjson.dumps({"ts": float(ts[i]), "values": vals})
                infos.append(self.c.publish(f"forewarn/{SITE}/{name}", body, qos=1))
                readings += len(vals)
        for info in infos:
            info.wait_for_publish(60)
        self.sent += readings
        return readings

    def close_tails(self, assets: list[tuple[str, np.ndarray, np.ndarray, list[str]]],
                    lateness: int) -> int:
        """One reading a lateness bound past each file's end: it closes the file's last
        slots (a gap there leaves them open until a later reading), as the next live
        reading would and as the bulk replay's closing reading does."""
        infos = []
        for name, ts, values, signals in assets:
            body = orjson.dumps({"ts": float(ts[-1]) + lateness + 2,
                                 "values": {signals[0]: float(values[0, -1])}})
            infos.append(self.c.publish(f"forewarn/{SITE}/{name}", body, qos=1))
        for info in infos:
            info.wait_for_publish(60)
        self.sent += len(infos)
        return len(infos)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _scrape(base: str, name: str) -> float:
    try:
        text = httpx.get(base + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return -1.0
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def run(data: Path, work: Path, rows: int = 400, on_failure: str | None = None
        ) -> dict[str, Any]:
    """One replay; ``on_failure`` overrides the template's ``on_verification_failure``
    (``refuse``: a failed verification leaves the asset without model alerts)."""
    from edge.models.signing import generate_keypair
    from trainer.bulkfeed import replay_window_set, window_series
    from trainer.calibrate import Counts
    from trainer.cli import train_from_config
    from trainer.evaluate import evaluate_skab
    from trainer.skab import load_labelled

    t_start = time.monotonic()
    keys = work / "keys"
    generate_keypair(keys / "central.key", keys / "central.pub")
    state = work / "state"
    generate_keypair(state / "keys" / "site.key", state / "keys" / "site.pub")
    config = CONFIG
    if on_failure is not None:
        config = work / CONFIG.name
        text = CONFIG.read_text()
        assert "\non_verification_failure = " in text
        config.write_text("\n".join(f'on_verification_failure = "{on_failure}"'
                                    if ln.startswith("on_verification_failure = ") else ln
                                    for ln in text.splitlines()) + "\n")
    _say("training the template on SKAB's anomaly-free run")
    tpl = train_from_config(config, work / "models", keys / "central.key", data, progress=None)
    manifest = json.loads((tpl / "manifest.json").read_text())
    trained_on = [f["name"] for f in manifest["lineage"]["files"]]
    alerts = manifest["lineage"]["config"]["alerts"]
    files = load_labelled(data)
    assert not any(f.name in trained_on for f in files), "template trained on a test file"
    signals = [s["name"] for s in manifest["signals"]]
    base_ts = float(int(time.time()) - 7 * 86400)
    assets = []
    for f in files:
        # Shifted by whole seconds (the 1 s grid is kept) to last week: retention keeps it.
        assets.append((f.asset, f.ts - f.ts[0] + base_ts, f.select(signals), signals))
    broker = start_broker(work / "broker")
    api = free_port()
    cfg = {"site": SITE, "state_dir": str(state),
           "mqtt": {"host": "127.0.0.1", "port": broker.port, "client_id": "skab-agent"},
           "bundle": {"path": str(tpl), "name": manifest["name"],
                      "trusted_keys": [str(keys / "central.pub")],
                      "site_keys": [str(state / "keys" / "site.pub")], "registry_poll_s": 0.5},
           "alerts": {"k": alerts["k"], "n": alerts["n"], "clear_after": alerts["clear_after"]},
           "api": {"host": "127.0.0.1", "port": api},
           "ingest": {"max_lateness_slots": LATENESS_SLOTS},
           "storage": {"flush_interval_s": 0.2}}
    conf = work / "agent.toml"
    conf.write_text(_toml(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = (work / "agent.log").open("wb")
    agent = subprocess.Popen([sys.executable, "-c", "import sys; from edge.cli import main; "
                              f"sys.exit(main(['agent', '--config', {str(conf)!r}]))"],
                             cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{api}"
    events = pub = None
    try:
        wait_for(lambda: _scrape(base, "forewarn_mqtt_connected") == 1, 60, "agent connected",
                 poll=0.2)
        events, pub = Events(broker.port), Publisher(broker.port)
        _say(f"replaying the commissioning rows of {len(files)} assets")
        t0 = time.monotonic()
        n1 = pub.rows(assets, 0, rows)
        n1 += pub.rows(assets, rows, rows + 1, signals_of_first=1)
        wait_for(lambda: _scrape(base, "forewarn_readings_received_total") >= n1, 300,
                 "commissioning readings in the agent", poll=0.2)
        wait_for(lambda: all(a["windows"] > 0 for a in _commissioning(base)["assets"])
                 and len(_commissioning(base)["assets"]) == len(files), 60,
                 "every asset learning", poll=0.2)
        time.sleep(1.0)  # the history's last flush (flush_interval_s 0.2) and assets.json
        replay1 = time.monotonic() - t0
        _say("running forewarn commission --once")
        t1 = time.monotonic()
        learner = subprocess.run(
            [sys.executable, "-m", "trainer.commission_cli", "--config", str(conf), "--once"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
        learn_s = time.monotonic() - t1
        sys.stderr.write(learner.stderr)
        if learner.returncode != 0:
            raise RuntimeError(f"forewarn commission failed:\n{learner.stderr[-2000:]}")
        wait_for(lambda: all(a["state"] != "learning"
                             for a in _commissioning(base)["assets"]), 120,
                 "every asset ready or insufficient_data", poll=0.2)
        states = {a["asset"]: a for a in _commissioning(base)["assets"]}
        _say("replaying the test rows")
        scored0 = _scrape(base, "forewarn_windows_scored_total")
        t2 = time.monotonic()
        longest = max(len(ts) for _, ts, _, _ in assets)
        n2 = pub.rows(assets, rows, rows + 1, skip_first=1)
        n2 += pub.rows(assets, rows + 1, longest)
        n2 += pub.close_tails(assets, LATENESS_SLOTS)
        # Every window ending on or before a file's last row is scored (or counted as
        # learning for a refused asset): the same windows the bulk replay cuts.
        expect = 0
        from edge.models.bundle import Manifest
        m = Manifest.model_validate(manifest)
        for name, ts, values, _ in assets:
            end, _w = window_series(replay_window_set(m, len(ts)), name, ts, values)
            if states[name]["state"] == "ready":
                expect += int(np.sum((end >= ts[rows]) & (end <= ts[-1])))
        try:
            wait_for(lambda: _scrape(base, "forewarn_windows_scored_total") - scored0
                     >= expect, 300, f"{expect} test windows scored", poll=0.2)
        except TimeoutError as exc:  # reported with the counters, not fatal
            _say(f"{exc}; counters: {_counters(base)}")
        replay2 = time.monotonic() - t2
        assert events is not None
        wait_for(lambda: time.monotonic() - events.last > 3.0, 60, "alert events settled",
                 poll=0.2)
        scored = _scrape(base, "forewarn_windows_scored_total") - scored0
        received = _scrape(base, "forewarn_readings_received_total")
        counters = _counters(base)
    finally:
        if pub is not None:
            pub.close()
        if events is not None:
            events.close()
        agent.terminate()
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
        broker.stop()
    # -- the figure from the agent's events ----------------------------------------
    counts, per_file = Counts(), {}
    for f, (name, ts, _, _) in zip(files, assets, strict=True):
        test = ts >= ts[rows]
        pred = np.zeros(int(test.sum()), dtype=bool)
        opened: float | None = None
        for ev, t in events.model.get(name, []):
            if ev == "opened":
                opened = t
            elif ev == "auto_cleared" and opened is not None:
                pred |= (ts[test] >= opened) & (ts[test] < t)
                opened = None
        if opened is not None:
            pred |= ts[test] >= opened
        y = f.anomaly[test].astype(bool)
        counts.add(y, pred)
        per_file[f.name] = {"state": states[name]["state"], "reason": states[name]["reason"],
                            "tp": int((y & pred).sum()), "fp": int((~y & pred).sum()),
                            "fn": int((y & ~pred).sum()), "tn": int((~y & ~pred).sum()),
                            "alerts": sum(1 for ev, _ in events.model.get(name, [])
                                          if ev == "opened")}
    live = counts.metrics()
    _say("the per-file protocol beside it (forewarn evaluate --config skab_pca.toml)")
    ref = evaluate_skab(data, config=REPO / "trainer/configs/skab_pca.toml", progress=None)
    ref_per = {}
    for f, r in zip(files, ref.assets, strict=True):
        from trainer.calibrate import pointwise
        assert r.labels is not None
        p = pointwise(r.row_ts, r.win_ts, r.active)
        y = r.labels.astype(bool)
        ref_per[f.name] = {"tp": int((y & p).sum()), "fp": int((~y & p).sum())}
    same = [n for n in per_file if per_file[n]["state"] == "ready"
            and (per_file[n]["tp"], per_file[n]["fp"]) == (ref_per[n]["tp"], ref_per[n]["fp"])]
    return {
        "live": live, "per_file_protocol": {k: ref.metrics[k] for k in
                                            ("f1", "far_pct", "mar_pct", "tp", "fp", "fn",
                                             "tn")},
        "files": len(files), "ready": sum(1 for a in states.values() if a["state"] == "ready"),
        "unverified": {n: a["reason"] for n, a in states.items()
                       if a["state"] == "ready" and a.get("verified") is False},
        "insufficient": {n: a["reason"] for n, a in states.items()
                         if a["state"] == "insufficient_data"},
        "files_identical_to_per_file": len(same), "per_file": per_file,
        "template": f"{manifest['name']}/{manifest['version']}", "trained_on": trained_on,
        "rule": alerts, "tail_alarm_budget": manifest["commissioning"]["tail_alarm_budget"],
        "on_verification_failure": manifest["commissioning"]["on_verification_failure"],
        "readings_published": pub.sent if pub else 0,
        "readings_received": received, "test_windows_scored": scored,
        "test_windows_expected": expect, "other_alert_events": events.other,
        "agent_counters": counters,
        "seconds": {"commissioning_replay": replay1, "learner": learn_s,
                    "test_replay": replay2, "total": time.monotonic() - t_start},
        "learner_output": learner.stderr.splitlines()[-40:],
    }


def _counters(base: str) -> dict[str, float]:
    """Windows skipped and readings dropped, by reason (what a shortfall is made of)."""
    try:
        text = httpx.get(base + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    return {line.split()[0]: float(line.split()[-1]) for line in text.splitlines()
            if line.startswith(("forewarn_windows_skipped_total{",
                                "forewarn_readings_dropped_total{",
                                "forewarn_ingest_queue_dropped_total",
                                "forewarn_decode_errors_total{"))}


def _commissioning(base: str) -> dict[str, Any]:
    try:
        out: dict[str, Any] = httpx.get(base + "/api/commissioning", timeout=5).json()
        return out
    except (httpx.HTTPError, ValueError):
        return {"assets": []}


def _toml(d: dict[str, Any], prefix: str = "") -> str:
    scalars = [f"{k} = {json.dumps(v)}" for k, v in d.items() if not isinstance(v, dict)]
    out = ([f"[{prefix}]"] if prefix and scalars else []) + scalars
    for k, v in d.items():
        if isinstance(v, dict):
            out.append(_toml(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(out) + "\n"


def _row(label: str, m: dict[str, float]) -> str:
    return (f"| {label} | {m['f1']:.4f} | {m['far_pct']:.2f} | {m['mar_pct']:.2f} | "
            f"{m['tp']:.0f} | {m['fp']:.0f} | {m['fn']:.0f} | {m['tn']:.0f} |")


def write(runs: dict[str, dict[str, Any]], out: Path, command: str) -> None:
    res = runs["shipped"]
    ref = res["per_file_protocol"]
    lines = [
        "# SKAB through commissioning: the deployed figure (bench/skab_commissioning.py)",
        "",
        f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores, {sum(r['seconds']['total'] for r in runs.values()):.0f} s).",
        "",
        "Protocol: the template `" + res["template"] + "` trained on "
        + ", ".join(res["trained_on"]) + " only (`trainer/configs/skab_pca_template.toml`); "
        f"each of the {res['files']} labelled files replayed as one asset over a real "
        "Mosquitto (QoS 1, assets interleaved row by row) into the agent in its own "
        "process; its first 400 rows are the commissioning period; after them (and the "
        "first reading of row 401, which ends the period) the replay pauses, `forewarn "
        "commission --once` learns, verifies and installs every asset's parameters, the "
        "agent reports each ready or insufficient_data, then the rest is replayed and a "
        "reading one lateness bound past each file's end closes its last slots. A test row "
        "(row 401 on) counts as predicted anomalous while a *model* alert is open (the "
        "agent's opened -> auto_cleared events on MQTT, data time); counts pooled over the "
        "files, F1 = TP / (TP + (FP + FN) / 2), FAR = FP / (FP + TN), MAR = FN / (FN + TP), "
        f"as `forewarn evaluate`'s SKAB protocol. Alert rule k={res['rule']['k']} "
        f"n={res['rule']['n']} clear_after={res['rule']['clear_after']} and level 3.2 (the "
        "template's).",
        "",
        "| figure | F1 | FAR % | MAR % | TP | FP | FN | TN |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in runs.items():
        what = ("as shipped" if key == "shipped" else "a template that refuses")
        label = (f"live agent, {what} (tail budget {r['tail_alarm_budget']:.0%}, a failed "
                 f"verification {r['on_verification_failure']}s): {r['ready']}/{r['files']} "
                 f"ready, {len(r['unverified'])} unverified")
        lines.append(_row(label, r["live"]))
    lines += [_row("per-file protocol, `forewarn evaluate --config skab_pca.toml`", ref), ""]
    for key, r in runs.items():
        lines.append(f"- {key}: every ready asset's TP/FP identical to the per-file "
                     f"protocol's: {r['files_identical_to_per_file']} of {r['ready']}; "
                     f"readings published {r['readings_published']:,}, received "
                     f"{r['readings_received']:,.0f}; test windows scored "
                     f"{r['test_windows_scored']:,.0f} (at least {r['test_windows_expected']:,} "
                     f"expected); limit alert events (not counted) {r['other_alert_events']}; "
                     f"learner {r['seconds']['learner']:.1f} s for {r['files']} assets.")
        for n, why in sorted(r["insufficient"].items()):
            lines.append(f"  - refused `{n}` (no model alerts on it): {why}")
        for n, why in sorted(r["unverified"].items()):
            lines.append(f"  - flagged unverified `{n}` (it scores; the page says why): {why}")
    lines += ["", "Per file, verification as shipped:", "",
              "| file | state | alerts | TP | FP | FN | TN |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {p['state']} | {p['alerts']} | {p['tp']} | {p['fp']} | {p['fn']} | "
              f"{p['tn']} |" for n, p in res["per_file"].items()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(runs, indent=1, default=float) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.skab_commissioning",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="SKAB repository or its data/ folder (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help="results markdown (a .json beside it); default: %(default)s")
    ap.add_argument("--keep", type=Path, default=None,
                    help="work in this folder and keep it (agent log, state, bundles)")
    ap.add_argument("--shipped-only", action="store_true",
                    help="only the template as shipped (skip the run with a template that "
                         "refuses a failed verification)")
    args = ap.parse_args(argv)
    if not args.data.exists():
        print(f"SKAB not found at {args.data}: skipped (give --data)", file=sys.stderr)
        return 0
    runs: dict[str, dict[str, Any]] = {}
    variants = {"shipped": None} if args.shipped_only else {"shipped": None,
                                                              "refuse": "refuse"}
    for key, on_failure in variants.items():
        _say(f"== {key}")
        if args.keep is not None:
            (args.keep / key).mkdir(parents=True, exist_ok=False)
            runs[key] = run(args.data, (args.keep / key).resolve(), on_failure=on_failure)
        else:
            with tempfile.TemporaryDirectory(prefix="forewarn-skab-commission-") as tmp:
                runs[key] = run(args.data, Path(tmp), on_failure=on_failure)
    command = "python -m bench.skab_commissioning" + (" --shipped-only"
                                                       if args.shipped_only else "")
    write(runs, args.out, command)
    for key, r in runs.items():
        m = r["live"]
        print(f"{key}: F1 {m['f1']:.4f}  FAR {m['far_pct']:.2f} %  MAR {m['mar_pct']:.2f} %  "
              f"({r['ready']}/{r['files']} assets ready, {len(r['unverified'])} unverified)")
    ref = runs["shipped"]["per_file_protocol"]
    print(f"per-file protocol: F1 {ref['f1']:.4f}  FAR {ref['far_pct']:.2f} %; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
