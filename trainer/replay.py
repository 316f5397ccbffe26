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
             DDATA per row, NDEATH at the end; the agent's asset is <node>.<asset>;
             a Rebirth command (NCMD) is answered with the BIRTHs again
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
from pathlib import Path

from trainer.dataflag import add_data_argument

# The choices, here rather than imported: their modules load pyarrow and protobuf,
# which every `forewarn` command would then pay for (tests check both lists agree).
FORMATS = ("single", "signal", "batched", "sparkplug")
SUBSETS = ("FD001", "FD002", "FD003", "FD004")


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


def _run(args: argparse.Namespace) -> int:
    from trainer.replayer import run

    return run(args)

