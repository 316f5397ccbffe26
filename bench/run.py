"""``make bench``: every figure beside its ceiling, medians of several runs, results in md+json.

Run: ``.venv/bin/python -m bench.run [--quick]``. Loopback only; every loop is
bounded in count and time. Results: ``bench/results/<date>-<host>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import drain, figures, ingest, limits
from bench.common import free_port, summary, wait_for
from bench.report import write_results

REPO = Path(__file__).resolve().parents[1]


def _bundles(work: Path) -> dict[str, tuple[Path, Path]]:
    from tests.bundlefactory import make_bundle

    out = {
        "ingest": make_bundle(work / "m", name="ingest", signals=[f"s{i}" for i in range(4)],
                              window=16, hop=4, warning=1e9),
        "batched": make_bundle(work / "m", name="batched", signals=["v"], window=1000,
                               hop=1000, period=0.001, warning=1e9),
        "spb": make_bundle(work / "m", name="spb", signals=[f"s{i}" for i in range(10)],
                           window=16, hop=4, warning=1e9),
        "latency": make_bundle(work / "m", name="latency", signals=["x"], window=2, hop=1,
                               warning=40.0, reset=30.0, max_hold=0),
        "mem": make_bundle(work / "m", name="mem", signals=[f"s{i}" for i in range(10)],
                           window=30, hop=10, warning=1e9),
    }
    out["ingest_drift"] = _with_reference(*make_bundle(
        work / "m", name="ingest-drift", signals=[f"s{i}" for i in range(4)], window=16, hop=4,
        warning=1e9), work / "m" / "keys" / "signing.key")
    # The real C-MAPSS bundle, trained here (~40 s) so the figure is reproducible.
    from edge.models.signing import generate_keypair
    from trainer.cli import train_from_config
    key, pub = work / "k" / "train.key", work / "k" / "train.pub"
    generate_keypair(key, pub)
    path = train_from_config(REPO / "trainer/configs/cmapss_fd001.toml", work / "trained", key,
                             progress=None)
    out["cmapss"] = (path, pub)
    return out


def _with_reference(path: Path, pub: Path, key: Path) -> tuple[Path, Path]:
    """Add feature and score references (and so drift monitoring) to a factory bundle:
    without one the agent logs "drift is not monitored" and the drift cost is nil."""
    from edge.drift.monitor import reference_histogram
    from edge.models.signing import load_private_key, sign_bundle
    m = json.loads((path / "manifest.json").read_text())
    rng = np.random.default_rng(1)
    m["reference"] = {
        "features": {f: reference_histogram(rng.normal(3.0, 1.4, 4000)).model_dump()
                     for f in m["output"]["feature_names"]},
        "score": reference_histogram(rng.normal(3.0, 1.4, 4000)).model_dump()}
    (path / "manifest.json").write_text(json.dumps(m))
    sign_bundle(path, load_private_key(key))
    return path, pub


def _ingest(work: Path, res: dict[str, Any], b: dict[str, tuple[Path, Path]], runs: int,
            procs: list[int]) -> None:
    cases = [("single_json", ingest.single_json(), b["ingest"], procs),
             ("batched_json", ingest.batched_json(), b["batched"], [1]),
             ("sparkplug", ingest.sparkplug(), b["spb"], [1])]
    for key, stream, bundle, plist in cases:
        paho, sub = [], []
        agents: dict[int, list[dict[str, float]]] = {p: [] for p in plist}
        for r in range(runs):
            p_, s_ = ingest.ceilings(work, stream, 60)
            paho.append(p_)
            sub.append(s_)
            for p in plist:
                agents[p].append(ingest.fresh(work, ingest.drain_agent, stream, bundle,
                                              work / f"{key}-{p}-{r}", 90, p,
                                              storage={"enabled": False}))
        fig: dict[str, Any] = {"stream": stream.name, "readings": stream.readings,
                               "messages": len(stream.packets),
                               "paho_count": summary(paho), "mosquitto_sub": summary(sub)}
        for p, rows in agents.items():
            rate = summary([x["rate"] for x in rows])
            fig[f"agent_p{p}"] = rate | {
                "windows": min(x["windows"] for x in rows), "windows_expected": stream.windows,
                "late": max(x["late"] for x in rows),
                "queue_dropped": max(x["queue_dropped"] for x in rows),
                "vs_paho": rate["median"] / fig["paho_count"]["median"],
                "vs_mosquitto_sub": rate["median"] / fig["mosquitto_sub"]["median"]}
        if key == "single_json":
            naive = [ingest.fresh(work, ingest.drain_naive, stream, b["ingest"][0], 120)
                     for _ in range(runs)]
            fig["naive"] = summary(naive)
            # Storage and drift cost, and the default config (storage+drift on): each
            # drain in a fresh interpreter (a second drain in one process costs more),
            # the cases' order reversed every other round.
            from bench.hotpath import cost_case
            labels = {"storage_drift_off": "off", "storage_on": "storage",
                      "drift_on": "drift", "both_on": "both"}
            rows_of: dict[str, list[dict[str, float]]] = {k: [] for k in labels}
            for r in range(max(2, min(runs, 3))):
                for label in (list(labels) if r % 2 == 0 else list(labels)[::-1]):
                    rows_of[label].append(cost_case(work / f"cost-{label}-{r}", labels[label],
                                                    b["ingest_drift"]))
            for label, rows in rows_of.items():
                fig[f"cost_{label}"] = {"cpu_s": summary([x["cpu_s"] for x in rows]),
                                        "rate": summary([x["rate"] for x in rows])}
        res["figures"][f"ingest_{key}"] = fig
        print(f"ingest {key}: {json.dumps(fig, default=float)[:400]}", flush=True)


def _memory(work: Path, b: tuple[Path, Path], storage: bool = False,
            drop_cache: bool = True) -> dict[str, float]:
    """RSS of an agent process with 1,000 assets x 10 signals streaming through it.

    With storage the history's compaction runs in a short-lived child process: its
    RSS is sampled too, and ``total_peak_mb`` is the largest agent + children sum
    seen in one sample (what the gateway must hold while a compaction runs). The
    private (anonymous) part is kept beside it, and ``page_cache_dropped`` says
    whether the page cache was dropped before the agent started (root only).
    """
    dropped = figures.drop_page_cache() if drop_cache else False
    broker = ingest.start_broker(work / f"mb-{storage}")
    proc, url = _spawn_agent(work / f"mem-{storage}", b, broker.port, storage=storage)
    peaks = {"agent": 0.0, "children": 0.0, "total": 0.0, "private": 0.0}

    def sample() -> None:
        agent = figures.rss_mb(proc.pid)
        kids = sum(figures.rss_mb(c) for c in figures.descendants(proc.pid))
        peaks["private"] = max(peaks["private"], figures.private_mb(proc.pid))
        peaks["agent"] = max(peaks["agent"], agent)
        peaks["children"] = max(peaks["children"], kids)
        peaks["total"] = max(peaks["total"], agent + kids)

    try:
        wait_for(lambda: _scrape(url, "forewarn_mqtt_connected") == 1, 30, "mem agent")
        # The link comes up while start() is still running (the API, then the unmap of
        # start-up library pages): idle is read once start() is through.
        time.sleep(2.0)
        idle, idle_private = figures.rss_mb(proc.pid), figures.private_mb(proc.pid)
        import orjson
        slots, n = 60, 0
        for t0 in range(0, slots, 10):
            pk = [ingest.publish_packet(f"forewarn/site1/m{a}", orjson.dumps(
                {"ts": ingest.T0 + t, "values": {f"s{i}": 1.0 + (a + i + t) % 5
                                                 for i in range(10)}}))
                  for t in range(t0, t0 + 10) for a in range(1000)]
            n += ingest.raw_publish(broker.port, pk)
            sample()
        # 600k rows pass the log's 500k-row trigger, but the log keeps segments younger
        # than the warm start's tail (wal_keep_s: 2 x (window + lateness + hop + margin)
        # slots, 94 s for this bundle) out of a compaction: wait past that for it.
        deadline = time.monotonic() + (180 if storage else 60)

        def settled() -> bool:
            if (_scrape(url, "forewarn_readings_received_total") or 0) < n * 10:
                return False
            return not storage or (_scrape(url, "forewarn_storage_compactions_total") or 0) >= 1
        while not settled() and time.monotonic() < deadline:
            sample()
            time.sleep(0.1)
        sample()
        # What the agent keeps once the burst is through (the queue empty, the pipeline
        # idle): freed heap handed back (edge/core/trim.py) or kept at the peak.
        time.sleep(5.0)
        after = figures.rss_mb(proc.pid)
        return {"idle_mb": idle, "peak_mb": peaks["agent"], "after_mb": after,
                "idle_private_mb": idle_private, "peak_private_mb": peaks["private"],
                "page_cache_dropped": 1.0 if dropped else 0.0,
                "child_peak_mb": peaks["children"], "total_peak_mb": peaks["total"],
                "assets": 1000, "signals": 10,
                "readings": _scrape(url, "forewarn_readings_received_total") or 0,
                "windows": _scrape(url, "forewarn_windows_scored_total") or 0,
                "compactions": _scrape(url, "forewarn_storage_compactions_total") or 0}
    finally:
        proc.terminate()
        proc.wait(20)
        broker.stop()


def _spawn_agent(work: Path, b: tuple[Path, Path], broker_port: int,
                 storage: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    """An agent in its own process (its RSS is the agent's alone); /metrics URL."""
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    cfg = {"site": "site1", "state_dir": str(work / "mstate"),
           "mqtt": {"port": broker_port, "client_id": "mem"},
           "bundle": {"path": str(b[0]), "trusted_keys": [str(b[1])]},
           "api": {"port": port}, "storage": {"enabled": storage}}
    (work / "mem.json").write_text(json.dumps(cfg))
    code = ("import json,signal,threading\nfrom pathlib import Path\n"
            "from edge.core.config import parse_config\nfrom edge.app import Agent\n"
            f"a=Agent(parse_config(json.loads(Path({str(work / 'mem.json')!r}).read_text())))\n"
            "d=threading.Event();signal.signal(signal.SIGTERM,lambda *_:d.set())\n"
            "a.start();d.wait();a.stop()\n")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO), \
        f"http://127.0.0.1:{port}/metrics"


def _scrape(url: str, name: str) -> float | None:
    try:
        for line in httpx.get(url, timeout=2).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    except httpx.HTTPError:
        return None
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description="Every performance figure of the agent and "
                                 "its limits; writes bench/results/<date>-<host>.md/.json.")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 run, fewer process counts")
    ap.add_argument("--keep-page-cache", action="store_true",
                    help="do not drop the page cache before each memory sample (it is "
                         "dropped when run as root, so RSS does not depend on what the "
                         "install or earlier figures left cached); the report says which")
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    t_start = time.monotonic()
    res: dict[str, Any] = {"machine": _machine(), "figures": {}}
    with tempfile.TemporaryDirectory(prefix="forewarn-bench-") as tmp:
        work = Path(tmp)
        b = _bundles(work)
        cm = b["cmapss"]
        res["figures"]["scoring"] = {
            str(bs): _med([figures.scoring(*cm, bs) for _ in range(runs)])
            for bs in (1, 64, 512)}
        res["figures"]["replay"] = summary([figures.replay(*cm) for _ in range(runs)])
        res["figures"]["reload_rss"] = figures.reload_rss(*cm)
        print("scoring/replay/reload done", flush=True)
        res["figures"]["drain"] = drain.figure(work / "drain", runs)
        print("drain", res["figures"]["drain"], flush=True)
        for key, storage in (("memory", False), ("memory_storage", True)):
            res["figures"][key] = _med([_memory(work / f"{key}{r}", b["mem"], storage=storage,
                                                drop_cache=not args.keep_page_cache)
                                        for r in range(runs)])
            print(key, {k: v["median"] for k, v in res["figures"][key].items()}, flush=True)
        _latency(work, res, b["latency"], runs)
        _ingest(work, res, b, runs, [1, 2] if args.quick else [1, 2, 3])
        res["figures"]["profile"] = _profile(work, b["ingest"])
        _flood(work, res, runs)
        try:
            _commissioning(work, res, runs)
        except RuntimeError as exc:  # a figure that could not be measured, said so
            print(f"commissioning figures not measured: {exc}", flush=True)
            res["figures"]["commission_latency_error"] = str(exc)[:300]
        shutil.rmtree(work, ignore_errors=True)
    res["duration_s"] = time.monotonic() - t_start
    md, js = write_results(res, REPO / "bench" / "results")
    print(f"wrote {md} and {js} in {res['duration_s']:.0f} s")
    return 0


def _latency(work: Path, res: dict[str, Any], b: tuple[Path, Path], runs: int) -> None:
    """The agent's publish -> alert event latency and, interleaved with it on the same
    broker, the bare durable loop's (its limit); the raw fsync and commit beside them."""
    lat, bare, disk = [], [], []
    for r in range(runs):
        br = ingest.start_broker(work / f"lb{r}")
        try:
            # Alternate which goes first so a slow drift of the machine favours neither.
            for side in (("agent", "bare") if r % 2 == 0 else ("bare", "agent")):
                if side == "bare":
                    bare.append(limits.bare_loop(work / f"bare{r}", br, b[0]))
                    continue
                cfg = ingest.agent_cfg(work / f"lat{r}", *b, br.port,
                                       storage={"enabled": False}, alerts={"clear_after": 3})
                agent = ingest.Agent(cfg)
                agent.start()
                try:
                    wait_for(agent.conn.connected.is_set, 20, "latency agent")
                    lat.append(figures.latency_external(br))
                finally:
                    agent.stop()
        finally:
            br.stop()
        disk.append(limits.fsync_commit(work / f"disk{r}"))
    f = res["figures"]
    f["latency"] = {k: summary([x[k] for x in lat]) for k in lat[0]}
    f["limit_bare_loop"] = {k: summary([x[k] for x in bare]) for k in bare[0]}
    f["limit_disk"] = {k: summary([x[k] for x in disk]) for k in disk[0]}
    print("latency", f["latency"], "bare", f["limit_bare_loop"], "disk", f["limit_disk"],
          flush=True)


def _flood(work: Path, res: dict[str, Any], runs: int) -> None:
    """Good readings' latency under a junk flood over the quiet figure (bench/flood.py)."""
    from bench import flood

    fl = flood.run(work / "flood", max(runs, 3))
    flood.write(fl, REPO / "bench" / "results" / f"{time.strftime('%Y-%m-%d')}-flood.md",
                f"python -m bench.flood --rounds {max(runs, 3)}")
    res["figures"]["flood"] = {k: v for k, v in fl.items() if k != "rounds"}
    print("flood", res["figures"]["flood"], flush=True)


def _commissioning(work: Path, res: dict[str, Any], runs: int) -> None:
    """Alert latency with the learner running (bench/commission_latency.py) and SKAB's 30
    files through commissioning in the live agent (bench/skab_commissioning.py)."""
    from bench import commission_latency, skab_commissioning

    day = time.strftime("%Y-%m-%d")
    # Enough learning assets to keep the learner busy through every measurement on a
    # quiet machine (60 finished early once the learner got faster).
    lat = commission_latency.run(work / "commission-latency", runs, 150)
    commission_latency.write(lat, REPO / "bench" / "results" / f"{day}-commission-latency.md",
                             f"python -m bench.commission_latency --runs {runs} --assets 150")
    res["figures"]["commission_latency"] = lat
    print("commission latency", lat["ratio_p99"], flush=True)
    if not skab_commissioning.DEFAULT_DATA.is_dir():
        print(f"SKAB absent ({skab_commissioning.DEFAULT_DATA}): no commissioning figure",
              flush=True)
        return
    out = REPO / "bench" / "results" / f"{day}-skab-commissioning.md"
    skab_commissioning.main(["--out", str(out)])
    res["figures"]["skab_commissioning"] = {
        k: {x: v[x] for x in ("live", "per_file_protocol", "ready", "files",
                              "files_identical_to_per_file")}
        for k, v in json.loads(out.with_suffix(".json").read_text()).items()}


def _med(rows: list[dict[str, float]]) -> dict[str, Any]:
    return {k: summary([r[k] for r in rows]) for k in rows[0]}


def _profile(work: Path, b: tuple[Path, Path]) -> list[str]:
    """cProfile of the pipeline on decoded-in-process messages (no MQTT): top entries."""
    import cProfile
    import io
    import pstats

    import orjson

    from edge.ingest.message import Message
    cfg = ingest.agent_cfg(work / "prof", *b, 1, storage={"enabled": False})
    agent = ingest.Agent(cfg)
    now = time.time()  # received: readings stamped before it are not refused as future
    msgs = [Message(f"forewarn/site1/a{a}/s{s}", orjson.dumps(
        {"ts": ingest.T0 + t, "value": 1.0 + (a + t) % 5}), now, 0, 0)
        for t in range(40) for a in range(500) for s in range(4)]
    pr = cProfile.Profile()
    pr.enable()
    for i in range(0, len(msgs), 4096):
        agent.pipeline.process(msgs[i:i + 4096])
    pr.disable()
    out = io.StringIO()
    pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(12)
    agent.alert_store.close()
    return [ln for ln in out.getvalue().splitlines() if ln.strip()][-13:]


def _machine() -> dict[str, Any]:
    import onnxruntime
    import paho.mqtt
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), platform.processor())
    mosq = subprocess.run([ingest.shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"],
                          capture_output=True, text=True).stdout.splitlines()[:1]
    return {"host": platform.node(), "cpu": cpu, "cores": __import__("os").cpu_count(),
            "mem_gb": round(int(Path("/proc/meminfo").read_text().split()[1]) / 1e6, 1),
            "python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__, "paho": paho.mqtt.__version__,
            "mosquitto": mosq[0] if mosq else "?", "kernel": platform.release(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


if __name__ == "__main__":
    raise SystemExit(main())
