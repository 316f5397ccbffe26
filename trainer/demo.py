"""``forewarn demo``: the whole product on one machine, from training to alerts.

Stages: signing keys -> train a bundle on C-MAPSS FD001 -> local broker
(Mosquitto, or the embedded amqtt) -> agent (a child process, as on a gateway)
-> replay of the test engines as live MQTT streams -> summary. The crew page
stays up until Ctrl-C, which stops every process the demo started.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.core.errors import ForewarnError
from trainer.broker import LocalBroker, pick_port, start_broker, wait_listening

if TYPE_CHECKING:  # the data set and the replay load pyarrow and protobuf: only when run
    from trainer.cmapss import CMAPSS

CONFIG = Path(__file__).with_name("configs") / "cmapss_fd001.toml"
DEMO_TOKEN = "forewarn-demo-token"  # for the crew page on a local demo only


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def ensure_bundle(state: Path, retrain: bool) -> tuple[Path, Path]:
    from edge.models.signing import generate_keypair
    from trainer.cli import train_from_config

    keys = state / "keys"
    if not (keys / "signing.key").exists():
        kid = generate_keypair(keys / "signing.key", keys / "signing.pub")
        say(f"generated signing key pair {kid} in {keys}")
    found = sorted((state / "models").glob("*/*/manifest.json"))
    if found and not retrain:
        say(f"using the bundle trained earlier: {found[-1].parent} (--retrain to redo)")
        return found[-1].parent, keys / "signing.pub"
    say("training a remaining-useful-life model on NASA C-MAPSS FD001 ...")
    bundle = train_from_config(CONFIG, state / "models", keys / "signing.key",
                               overwrite=retrain)
    return bundle, keys / "signing.pub"


def write_agent_config(state: Path, bundle: Path, pub: Path, broker: LocalBroker,
                       api_port: int) -> Path:
    tokens = state / "tokens.txt"
    if not tokens.exists():
        tokens.write_text(f"crew:{DEMO_TOKEN}\n")
        tokens.chmod(0o600)
    cfg = state / "agent.toml"
    cfg.write_text(f"""# Written by `forewarn demo`.
site = "demo"
state_dir = "{state / 'agent-state'}"

[mqtt]
host = "127.0.0.1"
port = {broker.port}
protocol = "{broker.protocol}"
client_id = "forewarn-demo-agent"

[bundle]
path = "{bundle}"
trusted_keys = ["{pub}"]

[api]
host = "127.0.0.1"
port = {api_port}
tokens_file = "{tokens}"
""")
    return cfg


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def metric(base: str, name: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@dataclass
class Summary:
    readings: int
    windows: int
    alerts: int
    detected: int  # engines failing within 30 cycles of their last reading, alerted
    should_detect: int
    early_alerts: int  # alerts raised while the engine still had > 60 cycles left
    lead_times: list[float]

    def lines(self) -> list[str]:
        med = f"{statistics.median(self.lead_times):.0f}" if self.lead_times else "n/a"
        return [
            f"readings received      {self.readings}",
            f"windows scored         {self.windows}",
            f"alerts raised          {self.alerts}",
            f"engines failing soon   {self.detected}/{self.should_detect} alerted "
            "(true remaining life < 30 cycles at the end of the replay)",
            f"alerts with > 60 cycles still left (early/false): {self.early_alerts}",
            f"median alert lead time {med} cycles before failure",
        ]


def summarise(data: CMAPSS, units: list[int], origin: float, alerts: list[dict[str, Any]],
              readings: float, windows: float) -> Summary:
    from trainer.cmapss import asset_name

    first: dict[str, float] = {}
    for a in alerts:
        # data_ts: the timestamp of the window that opened it (replay time, not wall time)
        ts = float(a.get("data_ts") or a.get("opened_ts") or 0)
        first[a["asset"]] = min(ts, first.get(a["asset"], ts))
    lead, detected, should, early = [], 0, 0, 0
    for u in units:
        unit = data.test[u - 1]
        failure_cycle = float(unit.cycles[-1] + data.test_rul[u - 1])
        failing = data.test_rul[u - 1] < 30
        should += int(failing)
        opened = first.get(asset_name(u))
        if opened is None:
            continue
        detected += int(failing)
        left = failure_cycle - (opened - origin)
        lead.append(left)
        early += int(left > 60)
    return Summary(int(readings), int(windows), len(alerts), detected, should, early, lead)


def fetch_alerts(base: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        page = http_json(f"{base}/api/alerts?limit=500&offset={len(items)}")
        items.extend(page["items"])
        if not page["items"] or len(items) >= page["total"]:
            return items


def run_demo(args: argparse.Namespace) -> int:
    state = args.state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    bundle, pub = ensure_bundle(state, args.retrain)
    # Each demo replays the same engines: start the agent from a clean state so the
    # summary counts this run's alerts only (keys and trained bundles are kept).
    shutil.rmtree(state / "agent-state", ignore_errors=True)
    shutil.rmtree(state / "broker", ignore_errors=True)
    procs: list[Any] = []
    try:
        broker = start_broker(state / "broker", pick_port(args.broker_port), args.broker)
        procs.append(broker)
        say(f"{broker.kind} broker on 127.0.0.1:{broker.port}")
        cfg = write_agent_config(state, bundle, pub, broker, args.port)
        log = (state / "agent.log").open("ab")
        agent = subprocess.Popen([sys.executable, "-m", "edge.cli", "agent", "--config",
                                  str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        procs.append(agent)
        try:
            wait_listening(args.port, agent, "agent", timeout=60)
        except RuntimeError as exc:
            tail = (state / "agent.log").read_text().splitlines()[-3:]
            raise ForewarnError(f"{exc}; last lines of {state / 'agent.log'}:\n  "
                                + "\n  ".join(tail)) from None
        base = f"http://127.0.0.1:{args.port}"
        say(f"agent up; the crew page is at {base}  (sign in with the token {DEMO_TOKEN})")
        from trainer.cmapss import load_cmapss
        from trainer.replayer import parse_units, replay

        data = load_cmapss("FD001")
        units = parse_units(args.units, len(data.test))
        say(f"replaying {len(units)} test engines at {args.speed:g} cycles/s ...")
        res = replay(data, units, host="127.0.0.1", port=broker.port, site="demo",
                     speed=args.speed, protocol=broker.protocol, progress=True)
        # Wait until the agent has scored everything it was sent.
        last, stable = -1.0, 0
        while stable < 3:
            time.sleep(0.5)
            n = metric(base, "forewarn_readings_received_total")
            stable = stable + 1 if n == last else 0
            last = n
        s = summarise(data, units, res.origin, fetch_alerts(base), last,
                      metric(base, "forewarn_windows_scored_total"))
        print("\n".join(["", "=== Forewarn demo summary ===", *s.lines(), ""]), flush=True)
        if args.exit:
            return 0
        say(f"crew page: {base} — press Ctrl-C to stop the agent and the broker")
        while agent.poll() is None:
            time.sleep(0.5)
        say(f"agent exited with code {agent.returncode}; see {state / 'agent.log'}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in reversed(procs):
            if isinstance(p, LocalBroker):
                p.stop()
            elif p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        say("stopped the agent and the broker")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="train, start broker + agent, replay C-MAPSS, show alerts",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state", type=Path, default=Path("demo-state"),
                   help="working directory for keys, bundles, broker and agent state")
    p.add_argument("--port", type=int, default=8080, help="crew page / API port (8080)")
    p.add_argument("--broker-port", type=int, default=1883,
                   help="preferred broker port (a free one is picked if taken)")
    p.add_argument("--units", default="all", help="test engines to replay (default all 100)")
    p.add_argument("--speed", type=float, default=25.0, help="cycles per second per engine")
    p.add_argument("--broker", choices=["auto", "mosquitto", "embedded"], default="auto",
                   help="auto: Mosquitto when installed, else the embedded amqtt broker")
    p.add_argument("--retrain", action="store_true", help="train again even if a bundle exists")
    p.add_argument("--exit", action="store_true",
                   help="exit after the summary instead of serving the page until Ctrl-C")
    p.set_defaults(func=run_demo)
