"""``forewarn replay``: stream any table the trainer accepts to an MQTT broker as live
readings, one stream per asset, at a chosen speed.

What is played: the table a training config's [data] section describes
(--config; --table replaces its file), a CSV or Parquet table described by flags
(--table with --timestamp, --asset-column, ...), or the C-MAPSS preset's test
engines (--subset, the default). Every table is read by the trainer's own
source, so a bad one is refused with the file, line or row, and column.

Payloads and topics (the agent's conventions; --site fills <site>):
  single     one message per row: forewarn/<site>/<asset>  {"ts": ..., "values": {...}}
  signal     one reading per message: forewarn/<site>/<asset>/<signal>  {"ts", "value"}
  batched    evenly spaced samples of one signal (dt = the sample period, at most
             --batch): forewarn/<site>/<asset>/<signal>  {"t0", "dt", "values": [...]}
  sparkplug  Sparkplug B, one edge node (--group, --node): NBIRTH, a DBIRTH per asset,
             DDATA per row, NDEATH at the end; the agent's asset is <node>.<asset>
A missing value (an empty cell) is not sent, and counted.

Time: --speed is data seconds per second (0 = as fast as the broker takes them); all
assets advance together. --time shift (default) moves the table's clock, by whole
sample periods, so its last row lies a minute before the replay starts: no reading
is in the future at any speed. --time keep sends the recorded times.

Examples, one per dataset kind:

  C-MAPSS (FD001/FD002 shipped; FD003/FD004 from --data):
      forewarn replay --subset FD001 --units 1-20 --speed 20
      forewarn replay --subset FD004 --data ~/CMAPSSData --units all --speed 0
      forewarn replay --config trainer/configs/cmapss_fd002.toml --units 1-5
  SKAB (a labelled experiment, read by the SKAB preset):
      forewarn replay --config trainer/configs/skab_pca.toml --data ~/SKAB \\
          --table ~/SKAB/data/valve1/0.csv --asset-name valve1-0 --speed 10
  Your own table, as a training config describes it:
      forewarn replay --config trainer/examples/plant_pca.toml --format batched
  ... or as flags describe it:
      forewarn replay --table plant.csv --timestamp timestamp \\
          --timestamp-format "%d.%m.%Y %H:%M:%S" --asset-column asset \\
          --signals bearing_temp_C,flow_l_min --speed 60 --format signal
  The agent's own history (`forewarn export --since ... --out h.parquet`):
      forewarn replay --table h.parquet --format sparkplug --speed 0

Progress (per asset, rate) goes to stderr; the summary (assets, rows, messages,
readings, missing values, errors) to stdout. Exit 0 when the broker acknowledged
every message, 1 when some were refused or never acknowledged, 2 on bad input.
Only MQTT 5 (--protocol 5, the default) lets a broker say it refused a publish (an
ACL, say); over 3.1.1 such a message is dropped unseen.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edge.core.errors import ForewarnError
from trainer import payloads, replaysource
from trainer.cmapss import CMAPSS, INFORMATIVE_SENSORS, PACKAGED_ROOT, SUBSETS, asset_name
from trainer.dataflag import add_data_argument
from trainer.mqttfeed import Broker, FeedResult, Progress, feed
from trainer.payloads import FORMATS, Stream
from trainer.replaysource import Plan

DEFAULT_SIGNALS = list(INFORMATIVE_SENSORS)



@dataclass
class ReplayResult:
    messages: int
    readings: int
    assets: list[str]
    origin: float  # the time shift: a row at data time t was sent with ts = origin + t
    seconds: float
    errors: int = 0


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


def play(plan: Plan, broker: Broker, *, fmt: str = "single", site: str = "site1",
         speed: float = 20.0, time_mode: str = "shift", batch: int = 100,
         group: str = "plant", node: str = "replay", progress: bool = True
         ) -> tuple[FeedResult, float]:
    """Send every stream of ``plan``; returns what the broker acknowledged and the
    time shift applied."""
    problems = payloads.name_problems(fmt, plan.streams, plan.signals, site=site,
                                      group=group, node=node)
    if problems:
        raise ForewarnError("the agent would refuse these names (edge.core.names): "
                            + "; ".join(problems[:5])
                            + (f"; and {len(problems) - 5} more" if len(problems) > 5 else ""))
    if fmt == "sparkplug" and plan.period < 0.001:
        raise ForewarnError(f"--format sparkplug: timestamps are whole milliseconds; the "
                            f"sample period {plan.period:g} s is finer")
    plan, shift = replaysource.shifted(plan, time_mode, time.time())
    msgs = payloads.messages(fmt, plan.streams, plan.signals, site=site, period=plan.period,
                             batch=batch, group=group, node=node)
    total = sum(s.values.size for s in plan.streams) - payloads.missing(plan.streams)
    bar = Progress(total, len(plan.streams)) if progress else None
    will = payloads.death(group, node) if fmt == "sparkplug" else None
    return feed(msgs, broker, speed=speed, will=will, progress=bar), shift


def replay(data: CMAPSS, units: list[int], *, host: str, port: int, site: str,
           signals: list[str] = DEFAULT_SIGNALS, speed: float = 20.0, period: float = 1.0,
           qos: int = 1, protocol: str = "5", progress: bool = False) -> ReplayResult:
    """Publish the C-MAPSS test engines ``units`` (single JSON, one message per cycle,
    ``ts = origin + cycle * period``); returns once the broker has them all."""
    streams = [Stream(asset_name(u), data.test[u - 1].cycles * period,
                      data.test[u - 1].signals(signals)) for u in units]
    plan = Plan(f"C-MAPSS {data.subset}", streams, list(signals), period, True)
    res, shift = play(plan, Broker(host, port, protocol, qos=qos), site=site, speed=speed,
                      progress=progress)
    return ReplayResult(res.messages, res.readings, [s.asset for s in streams], shift,
                        res.seconds, res.errors)


def _plan(args: argparse.Namespace) -> Plan:
    flags = vars(args)
    signals = [s.strip() for s in args.signals.split(",") if s.strip()] if args.signals \
        else None
    if args.config is not None:
        plan = replaysource.from_config(args.config, args.data, args.table, flags, signals,
                                        args.subset)
    elif args.table is not None:
        plan = replaysource.table(args.table, flags, signals, args.sample_period or 1.0)
    else:
        subset = args.subset or "FD001"
        try:
            plan = replaysource.cmapss_test(subset, args.data, signals or DEFAULT_SIGNALS,
                                            args.sample_period or 1.0)
        except FileNotFoundError as exc:
            shipped = "" if args.data is not None else (
                f" ({subset} is not among the copies shipped in {PACKAGED_ROOT}; "
                "give --data with the NASA files)")
            raise FileNotFoundError(f"{exc}{shipped}") from None
    if args.units is not None:
        if not plan.streams or not all(s.asset.startswith("engine-") for s in plan.streams):
            raise ForewarnError("--units numbers C-MAPSS engines; use --assets for a table")
        wanted = [asset_name(u) for u in parse_units(args.units, len(plan.streams))]
        plan = replaysource.select(plan, wanted)
    assets = [a.strip() for a in args.assets.split(",")] if args.assets else None
    return replaysource.select(plan, assets)


def _run(args: argparse.Namespace) -> int:
    try:
        plan = _plan(args)
        replaysource.print_repairs(plan)
        topic = (f"spBv1.0/{args.group}/DDATA/{args.node}/<asset>" if args.format ==
                 "sparkplug" else f"forewarn/{args.site}/<asset>"
                 + ("" if args.format == "single" else "/<signal>"))
        print(f"replaying {plan.source}: {len(plan.streams)} assets, {plan.rows} rows, "
              f"{len(plan.signals)} signals as {args.format} on {topic} at speed "
              f"{args.speed:g}", file=sys.stderr)
        broker = Broker(args.host, args.port, args.protocol, args.username,
                        args.password_file, args.qos)
        res, shift = play(plan, broker, fmt=args.format, site=args.site, speed=args.speed,
                          time_mode=args.time, batch=args.batch, group=args.group,
                          node=args.node, progress=not args.quiet)
    except (ForewarnError, ValueError, FileNotFoundError) as exc:
        print(f"forewarn replay: {exc}", file=sys.stderr)
        return 2
    missing = payloads.missing(plan.streams)
    print(f"published {res.messages} messages ({res.readings} readings) for "
          f"{len(plan.streams)} assets in {res.seconds:.2f}s ({res.rate:.0f} msg/s); "
          f"{plan.rows} rows, {missing} missing values not sent, {res.errors} errors"
          + (" (refused or never acknowledged by the broker)" if res.errors else "")
          + f"; timestamps shifted by {shift:+.0f} s")
    return 1 if res.errors else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay", help="stream a table (C-MAPSS, SKAB, your CSV/Parquet, an export) to "
        "MQTT as live readings", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("what to replay")
    src.add_argument("--config", type=Path, default=None,
                     help="training config whose [data] section describes the table")
    src.add_argument("--table", type=Path, default=None, metavar="FILE",
                     help="CSV or Parquet table (with --config: replaces the config's file)")
    add_data_argument(src, "data folder: C-MAPSS train_/test_/RUL_<subset>.txt[.gz] files "
                           "(default: the packaged FD001/FD002), a copy of SKAB, or the "
                           "folder a config's relative table path is in")
    src.add_argument("--subset", default=None, choices=SUBSETS,
                     help="C-MAPSS subset whose test engines play (default FD001; "
                          "FD003/FD004 need --data)")
    src.add_argument("--units", default=None, help="C-MAPSS test engines, e.g. 1-20,31 or "
                                                    "all (default all)")
    src.add_argument("--assets", default=None, help="only these assets (comma-separated)")
    src.add_argument("--signals", default=None,
                     help="signals, comma-separated (default: the config's; a table: every "
                          "column but the timestamp, asset and label)")
    src.add_argument("--sample-period", type=float, default=None, metavar="S",
                     help="seconds per sample: row spacing without a timestamp, batched dt "
                          "(default: the config's, else 1)")
    tab = p.add_argument_group("the table's columns (as [data.table]; override a config's)")
    tab.add_argument("--table-format", choices=["auto", "csv", "parquet"], default=None)
    tab.add_argument("--layout", choices=["auto", "wide", "long"], default=None)
    tab.add_argument("--delimiter", default=None, help='CSV: auto, whitespace or a character')
    tab.add_argument("--decimal", choices=["auto", ".", ","], default=None)
    tab.add_argument("--timestamp", default=None, help='timestamp column ("" = row index)')
    tab.add_argument("--timestamp-format", default=None,
                     help="auto, epoch_s, epoch_ms, iso8601, row_index or a strftime pattern")
    tab.add_argument("--asset-column", default=None, help="one stream per value of it")
    tab.add_argument("--asset-name", default=None, help="the single asset's name")
    out = p.add_argument_group("how to send it")
    out.add_argument("--format", choices=FORMATS, default="single",
                     help="payload format (default single)")
    out.add_argument("--speed", type=float, default=20.0,
                     help="data seconds per second (C-MAPSS: cycles per second at a 1 s "
                          "sample period); 0 = as fast as possible (default 20)")
    out.add_argument("--time", choices=["shift", "keep"], default="shift",
                     help="shift (default): last row a minute before now; keep: as recorded")
    out.add_argument("--batch", type=int, default=100, help="batched: samples per message")
    out.add_argument("--site", default="site1", help="site id in the topic (default site1)")
    out.add_argument("--group", default="plant", help="sparkplug: group id (default plant)")
    out.add_argument("--node", default="replay", help="sparkplug: edge node id (default "
                                                       "replay)")
    out.add_argument("--quiet", action="store_true", help="no progress on stderr")
    mq = p.add_argument_group("broker")
    mq.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    mq.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    mq.add_argument("--qos", type=int, choices=[0, 1], default=1)
    mq.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    mq.add_argument("--username", default=None)
    mq.add_argument("--password-file", type=Path, default=None)
    p.set_defaults(func=_run)
