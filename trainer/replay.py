"""``forewarn replay``: play C-MAPSS engines to an MQTT broker as live sensor streams.

Each engine becomes an asset ``engine-<unit>`` publishing one JSON message per
cycle on ``forewarn/<site>/<asset>`` (several signals at one instant). Engines run
in lockstep, one cycle every ``1/speed`` seconds; timestamps are ``origin +
cycle * period`` with the origin chosen so the whole replay lies in the past.

Data: the C-MAPSS test trajectories (test_<subset>.txt[.gz]; train_ and RUL_ files
beside them are read and checked too). FD001 and FD002 ship with the trainer;
FD003 and FD004 need --data pointing at a folder of the NASA files, e.g.

    forewarn replay --subset FD001 --units 1-20 --speed 20
    forewarn replay --subset FD004 --data ~/CMAPSSData --units all --speed 0
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from trainer.data import CMAPSS, PACKAGED_ROOT, SUBSETS, load_cmapss
from trainer.dataflag import add_data_argument

DEFAULT_SIGNALS = ["s2", "s3", "s4", "s7", "s8", "s9", "s11", "s12", "s13", "s14", "s15",
                   "s17", "s20", "s21"]


@dataclass
class ReplayResult:
    messages: int
    readings: int
    assets: list[str]
    origin: float
    seconds: float


def parse_units(spec: str, available: int) -> list[int]:
    """``"1-5,9"`` -> [1, 2, 3, 4, 5, 9]; ``"all"`` -> every unit."""
    if spec == "all":
        return list(range(1, available + 1))
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise SystemExit(f"--units: {part!r} is not a number or range like 1-20") from None
        if not 1 <= a <= b <= available:
            raise SystemExit(f"--units: {part!r} outside 1..{available}")
        out.extend(range(a, b + 1))
    return sorted(set(out))


def asset_name(unit: int) -> str:
    return f"engine-{unit:03d}"


def replay(
    data: CMAPSS,
    units: list[int],
    *,
    host: str,
    port: int,
    site: str,
    signals: list[str] = DEFAULT_SIGNALS,
    speed: float = 20.0,
    period: float = 1.0,
    qos: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Publish the test trajectories of ``units``; returns once the broker has them all."""
    series = {u: data.test[u - 1].signals(signals) for u in units}
    longest = max(s.shape[1] for s in series.values())
    origin = float(int(time.time() - longest * period - 60))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    infos = []
    sent = 0
    t_start = time.monotonic()
    try:
        for c in range(longest):
            for u, s in series.items():
                if c >= s.shape[1]:
                    continue
                cycle = int(data.test[u - 1].cycles[c])
                payload = orjson.dumps({
                    "ts": origin + cycle * period,
                    "values": {name: float(v) for name, v in zip(signals, s[:, c], strict=True)},
                })
                infos.append(client.publish(f"forewarn/{site}/{asset_name(u)}", payload, qos=qos))
                sent += 1
            if progress:
                progress(c + 1, longest)
            if speed > 0:
                delay = t_start + (c + 1) / speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()
    return ReplayResult(sent, sent * len(signals), [asset_name(u) for u in units], origin,
                        time.monotonic() - t_start)


def bar(label: str) -> Callable[[int, int], None]:
    """A one-line progress bar on stderr."""

    def show(done: int, total: int) -> None:
        if done != total and done % max(1, total // 50):
            return
        filled = int(30 * done / total)
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay", help="replay C-MAPSS test engines to MQTT as live streams",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    p.add_argument("--site", default="site1", help="site id in the topic (default site1)")
    p.add_argument("--subset", default="FD001", choices=SUBSETS,
                   help="C-MAPSS subset (default %(default)s; FD003/FD004 need --data)")
    add_data_argument(p, "folder with the C-MAPSS train_/test_/RUL_<subset>.txt[.gz] files "
                         "(default: the packaged FD001/FD002 copies)")
    p.add_argument("--units", default="1-20", help="test units, e.g. 1-20,31 or all")
    p.add_argument("--speed", type=float, default=20.0,
                   help="cycles per second per engine; 0 = as fast as possible")
    p.add_argument("--qos", type=int, choices=[0, 1], default=1)

    def run(args: argparse.Namespace) -> int:
        try:
            data = load_cmapss(args.subset, args.data)
        except (FileNotFoundError, ValueError) as exc:
            shipped = "" if args.data is not None else (
                f" ({args.subset} is not among the copies shipped in {PACKAGED_ROOT}; "
                "give --data with the NASA files)")
            print(f"forewarn replay: {exc}{shipped}", file=sys.stderr)
            return 2
        units = parse_units(args.units, len(data.test))
        res = replay(data, units, host=args.host, port=args.port, site=args.site,
                     speed=args.speed, qos=args.qos, progress=bar("replay"))
        print(f"published {res.messages} messages ({res.readings} readings) for "
              f"{len(res.assets)} engines in {res.seconds:.1f}s")
        return 0

    p.set_defaults(func=run)
