"""The agent's alert latency while the commissioning learner runs beside it, vs quiet.

    python -m bench.commission_latency [--runs 3] [--assets 60]

The latency figure of ``make bench`` (``bench.figures.latency``: 1,000 msg/s over
50 assets, publish -> alert event on MQTT, measured by a client in its own
process) against an in-process agent, four ways per run, in alternating order:

* ``quiet``: nothing else running;
* ``learner_unit``: ``forewarn commission --once`` in its own process, limited as
  ``systemd/forewarn-commission.service`` limits it, busy the whole measurement on
  a prepared site: ``--assets`` learning assets of the plant example template
  learning from 3,600 rows (an hour at 1 Hz) of history each (the learner's read,
  features, two fits, verification, signing and install per asset). ``Nice=19`` and
  ``IOSchedulingClass=idle`` are applied as such (``nice``, ``ionice -c 3``);
  ``CPUQuota=50%`` is a cgroup setting and there is no systemd in the bench's
  container, so it is *emulated*: the bench stops and continues the learner (SIGSTOP /
  SIGCONT) for half of every 100 ms, the period the cgroup throttles in;
  ``CPUSchedulingPolicy=idle`` (``SCHED_IDLE``) and the unit's one BLAS/OpenMP
  thread are applied as such;
* ``learner_quota_nice19``: the unit's limits before it had ``SCHED_IDLE`` and one
  thread (the same quota, nice and I/O class);
* ``learner_nice19``: priority only (``Nice=19``), no I/O class, no quota;
* ``learner_nice0``: the same learner at the agent's own priority, no limits (what
  the unit's limits are there to prevent).

``MemoryMax=`` is not applied. The target is the learner's p99 within 2x the quiet
p99.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import figures, ingest
from bench.common import start_broker, summary, wait_for
from edge.app import Agent

REPO = Path(__file__).resolve().parents[1]
ROWS = 3600  # an hour of 1 Hz rows per asset: a realistic commissioning period
DEFAULT_OUT = REPO / "bench" / "results" / "2026-12-02-commission-latency.md"


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def prepare(work: Path, assets: int) -> Path:
    """A learner's site: the plant template, ``assets`` learning assets with history, keys,
    the agent config the learner reads. Returns the folder (copied fresh per run)."""
    from edge.history.parquet import ParquetStore
    from edge.models.commissioning import paths, write_json
    from edge.models.signing import generate_keypair
    from trainer.cli import train_from_config

    site = work / "site"
    text = (REPO / "trainer/examples/plant_pca.toml").read_text()
    text = text.replace('name = "plant-pca"', 'name = "plant-template"').replace(
        'path = "plant.csv"', f'path = "{REPO / "trainer/examples/plant.csv"}"')
    (work / "t.toml").write_text(text + f"\n[commissioning]\nrows = {ROWS}\n")
    generate_keypair(work / "central.key", work / "central.pub")
    tpl = train_from_config(work / "t.toml", work / "models", work / "central.key",
                            progress=None)
    state = site / "state"
    generate_keypair(state / "keys" / "site.key", state / "keys" / "site.pub")
    store = ParquetStore(state / "history")
    t0 = float(int(time.time()) - 86_400)
    rng = np.random.default_rng(0)
    progress = {}
    n = ROWS + 100
    for a in range(assets):
        load = 0.5 * np.sin(2 * np.pi * np.arange(n) / (300 + a % 17)) + rng.normal(0, .02, n)
        flow = 115 + 8 * load + rng.normal(0, 0.4, n)
        sig = {"bearing_temp_C": 46 + 2 * load + rng.normal(0, 0.1, n), "flow_l_min": flow,
               "vibration_mm_s": 2.2 + 0.02 * (flow - 115) + rng.normal(0, 0.03, n)}
        ts = t0 + np.arange(n, dtype=np.float64)
        for s, v in sig.items():
            store.append(f"pump-{a:03d}", s, ts, v)
        progress[f"pump-{a:03d}"] = {"since": t0, "windows": n - 9}
    store.flush()
    store.close(compact=True)
    m = json.loads((tpl / "manifest.json").read_text())
    write_json(paths(state)[0], {"template": f"{m['name']}/{m['version']}",
                                 "assets": progress})
    (site / "agent.toml").write_text(
        f'site = "site1"\nstate_dir = "{state}"\n[bundle]\npath = "{tpl}"\n'
        f'trusted_keys = ["{work / "central.pub"}"]\nsite_keys = ["{state / "keys/site.pub"}"]\n'
        '[alerts]\nk = 3\nn = 5\nclear_after = 5\n')
    return site


@dataclass(frozen=True)
class Limits:
    nice: int = 0
    io_idle: bool = False
    cpu_quota: float | None = None  # share of one core, emulated (see the docstring)
    sched_idle: bool = False  # CPUSchedulingPolicy=idle
    threads: int | None = None  # OMP/OpenBLAS/MKL threads (the unit's Environment=)


CASES: dict[str, Limits | None] = {
    "quiet": None,
    "learner_unit": Limits(nice=19, io_idle=True, cpu_quota=0.5, sched_idle=True, threads=1),
    # The unit's limits before SCHED_IDLE and one BLAS thread.
    "learner_quota_nice19": Limits(nice=19, io_idle=True, cpu_quota=0.5),
    "learner_nice19": Limits(nice=19),
    "learner_nice0": Limits(),
}
LEARNERS = [k for k, v in CASES.items() if v is not None]


def learner(site: Path, limits: Limits) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "trainer.commission_cli", "--config",
           str(site / "agent.toml"), "--once"]
    if limits.io_idle:
        cmd = ["ionice", "-c", "3", *cmd]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if limits.threads is not None:
        env.update({k: str(limits.threads) for k in
                    ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})

    def limit() -> None:
        if limits.nice:
            os.nice(limits.nice)
        if limits.sched_idle:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    return subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit)


class Quota:
    """CPUQuota= emulated: the process runs ``share`` of every ``period_s``, then stops.

    A cgroup's quota lets it run up to its quota per period on any cores; stopping
    it for the rest of each period is the same bound for a single-threaded learner.
    """

    def __init__(self, pid: int, share: float, period_s: float = 0.1) -> None:
        self.pid, self.share, self.period = pid, share, period_s
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.done.is_set():
                time.sleep(self.period * self.share)
                os.kill(self.pid, signal.SIGSTOP)
                self.done.wait(self.period * (1 - self.share))
                os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        self.done.set()
        self.thread.join(1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)


def one(work: Path, bundle: tuple[Path, Path], site: Path | None, limits: Limits | None,
        tag: str) -> dict[str, float]:
    br = start_broker(work / f"b-{tag}")
    proc: subprocess.Popen[str] | None = None
    quota: Quota | None = None
    try:
        cfg = ingest.agent_cfg(work / f"a-{tag}", *bundle, br.port,
                               storage={"enabled": False}, alerts={"clear_after": 3})
        agent = Agent(cfg)
        agent.start()
        try:
            wait_for(agent.conn.connected.is_set, 20, "latency agent")
            extra: dict[str, float] = {}
            cpu0 = t0 = 0.0
            if site is not None and limits is not None:
                proc = learner(site, limits)
                if limits.cpu_quota is not None:
                    quota = Quota(proc.pid, limits.cpu_quota)
                assert proc.stderr is not None
                line = proc.stderr.readline()  # "commissioning under ...": it has started
                while line and not line.startswith("[1/"):
                    line = proc.stderr.readline()  # the first asset done: it is in its loop
                if proc.poll() is not None:
                    raise RuntimeError(f"the learner exited early: {proc.stderr.read()}")
                cpu0 = figures.pid_cpu_s(proc.pid)
                t0 = time.monotonic()
            lat = figures.latency_external(br)
            if proc is not None:
                if proc.poll() is not None:
                    assert proc.stderr is not None
                    raise RuntimeError(f"the learner finished (exit {proc.returncode}) during "
                                       "the measurement: give it more --assets; its output "
                                       f"ends: {proc.stderr.read()[-600:]}")
                extra = {"learner_cpu_share": (figures.pid_cpu_s(proc.pid) - cpu0)
                         / (time.monotonic() - t0)}
            return {**lat, **extra}
        finally:
            agent.stop()
    finally:
        if quota is not None:
            quota.stop()
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        br.stop()


def run(work: Path, runs: int, assets: int) -> dict[str, Any]:
    from tests.bundlefactory import make_bundle

    bundle = make_bundle(work / "m", name="latency", signals=["x"], window=2, hop=1,
                         warning=40.0, reset=30.0, max_hold=0)
    _say(f"preparing a site with {assets} learning assets")
    site = prepare(work, assets)
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in CASES}
    order = list(rows)
    for r in range(runs):
        for key in order if r % 2 == 0 else order[::-1]:
            fresh = None
            if key != "quiet":
                fresh = work / f"site-{key}-{r}"
                shutil.copytree(site, fresh)
                # The copied config names the prepared state: point it at the copy.
                conf = fresh / "agent.toml"
                conf.write_text(conf.read_text().replace(str(site / "state"),
                                                         str(fresh / "state")))
            _say(f"run {r + 1}/{runs}: {key}")
            rows[key].append(one(work, bundle, fresh, CASES[key], f"{key}-{r}"))
    out: dict[str, Any] = {k: {m: summary([x[m] for x in v]) for m in v[0]}
                           for k, v in rows.items()}
    q = out["quiet"]["p99_ms"]["median"]
    out["ratio_p99"] = {k: out[k]["p99_ms"]["median"] / q for k in LEARNERS}
    # Within one run the three cases ran back to back: their ratios cancel most of
    # what the machine's other load did to that run.
    out["ratio_p99_per_run"] = {k: summary([x["p99_ms"] / qq["p99_ms"] for x, qq in
                                            zip(rows[k], rows["quiet"], strict=True)])
                                for k in LEARNERS}
    out["ratio_p50_per_run"] = {k: summary([x["p50_ms"] / qq["p50_ms"] for x, qq in
                                            zip(rows[k], rows["quiet"], strict=True)])
                                for k in LEARNERS}
    out["load_average"] = os.getloadavg()[0]
    out["runs"], out["assets"] = runs, assets
    return out


def write(res: dict[str, Any], out: Path, command: str) -> None:
    lines = ["# Alert latency while the commissioning learner runs (bench/commission_latency.py)",
             "", f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{os.cpu_count()} cores). " + (__doc__ or "").split("\n\n", 2)[2].strip(), "",
             "| case | p50 ms | p99 ms | p99.9 ms | events | learner CPU share | p99 / quiet "
             "(medians) | p99 / quiet, per run | p50 / quiet, per run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k in CASES:
        f = res[k]
        share = f.get("learner_cpu_share")
        per = res["ratio_p99_per_run"].get(k)
        per50 = res["ratio_p50_per_run"].get(k)
        lines.append(f"| {k} | {f['p50_ms']['median']:.2f} | {f['p99_ms']['median']:.2f} "
                     f"(±{f['p99_ms']['spread_pct']:.0f}%) | {f['p999_ms']['median']:.2f} | "
                     f"{f['events']['median']:.0f} | "
                     f"{'' if share is None else format(share['median'], '.2f')} | "
                     f"{res['ratio_p99'].get(k, 1.0):.2f}x | "
                     + (f"{per['median']:.2f}x ({per['min']:.2f}-{per['max']:.2f}) | "
                        f"{per50['median']:.2f}x ({per50['min']:.2f}-{per50['max']:.2f}) |"
                        if per and per50 else "1.00x | 1.00x |"))
    lines += ["", f"Medians of {res['runs']} runs (± half the range; per-run ratios: "
              "median (min-max) of each run's case over that run's quiet figure); the "
              f"learner had {res['assets']} assets to learn and was busy for the whole "
              "measurement. Load average (1 min) at the end: "
              f"{res.get('load_average', float('nan')):.1f} on {os.cpu_count()} cores: this "
              "machine is shared, timing is noisy; read the ratios, not the digits."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.commission_latency", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--assets", type=int, default=60,
                    help="learning assets prepared for the learner (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="forewarn-commission-latency-") as tmp:
        res = run(Path(tmp), args.runs, args.assets)
    write(res, args.out, f"python -m bench.commission_latency --runs {args.runs} "
                         f"--assets {args.assets}")
    for k in LEARNERS:
        print(f"{k}: p99 {res[k]['p99_ms']['median']:.2f} ms = {res['ratio_p99'][k]:.2f}x "
              f"quiet ({res['quiet']['p99_ms']['median']:.2f} ms); per run "
              f"{res['ratio_p99_per_run'][k]['median']:.2f}x")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
