"""What ``forewarn replay`` does: a table -> streams per asset -> payloads -> the broker.

The command line is :mod:`trainer.replay`, kept free of this module's imports
(pyarrow, protobuf) so that ``forewarn agent`` never loads them.
"""


from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from edge.core.errors import ForewarnError
from trainer import payloads, replaysource
from trainer.cmapss import CMAPSS, INFORMATIVE_SENSORS, PACKAGED_ROOT, asset_name
from trainer.mqttfeed import Broker, FeedResult, Progress, feed
from trainer.payloads import Stream
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
    total = sum(s.values.size for s in plan.streams) - payloads.missing(plan.streams)
    bar = Progress(total, len(plan.streams)) if progress else None
    if fmt == "sparkplug":
        edge_node = payloads.SparkplugNode(plan.streams, plan.signals, group, node)
        return feed(iter(edge_node), broker, speed=speed, will=payloads.death(group, node),
                    progress=bar, rebirths=edge_node), shift
    msgs = payloads.messages(fmt, plan.streams, plan.signals, site=site, period=plan.period,
                             batch=batch, group=group, node=node)
    return feed(msgs, broker, speed=speed, progress=bar), shift


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


def run(args: argparse.Namespace) -> int:
    """``forewarn replay`` with parsed arguments (see :mod:`trainer.replay`)."""
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
          + (f", {res.rebirths} Rebirth commands answered" if res.rebirths else "")
          + (" (refused or never acknowledged by the broker)" if res.errors else "")
          + f"; timestamps shifted by {shift:+.0f} s")
    return 1 if res.errors else 0
