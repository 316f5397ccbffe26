"""``forewarn evaluate``'s command line: which data set, subset and protocol, the
figures printed with the protocol that produced them, the optional HTML report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edge.core.errors import ForewarnError
from trainer import evaluate
from trainer.dataflag import add_data_argument
from trainer.evaljson import write_json
from trainer.evalsource import DATASETS, resolve
from trainer.evaluate import evaluate_cmapss, evaluate_skab
from trainer.holdout import HOLDOUT_SPLITS
from trainer.report import write_report


def _run(args: argparse.Namespace) -> int:
    from edge.models.bundle import load_bundle

    try:
        bundle = None
        if args.bundle is not None:
            bundle = load_bundle(args.bundle, args.key, allow_unsigned=args.allow_unsigned)
        src = resolve(bundle.manifest if bundle else None, args.dataset, args.subset,
                      force_subset=args.force_subset)
        if args.config is not None and bundle is not None:
            raise ForewarnError("--config (a model refit per file) and --bundle (the "
                                "deployable bundle as trained) are two protocols; give one")
        if src.dataset == "skab":
            if args.config is None and bundle is None:
                raise ForewarnError("skab needs --config (per-file protocol) or --bundle")
            if args.holdout is not None and (args.config is None or bundle is not None):
                raise ForewarnError("--holdout needs --config and no --bundle (it tunes the "
                                    "per-file models' alert level and rule)")
            ev = evaluate_skab(args.data, config=args.config if bundle is None else None,
                               bundle=bundle, holdout=args.holdout)
        else:
            if bundle is None:
                raise ForewarnError("cmapss needs --bundle (a RUL bundle)")
            if args.holdout is not None:
                raise ForewarnError("--holdout applies to --dataset skab only")
            assert src.subset is not None
            ev = evaluate_cmapss(bundle, src.subset, args.data)
    except (ForewarnError, ValueError, FileNotFoundError) as exc:
        print(f"forewarn evaluate: {exc}", file=sys.stderr)
        return 2
    ev.command = "forewarn " + " ".join(sys.argv[1:])
    print(f"data: {src.note}")
    print(f"figures from: {ev.scored_by}")
    print(f"alert rule: {ev.rule_text}")
    for k, v in ev.metrics.items():
        print(f"  {k:26s} {v:.6g}")
    for note in ev.notes:
        print(note)
    events = sum(len(a.events) for a in ev.assets)
    print(f"alert events: {events} on {sum(1 for a in ev.assets if a.events)} of "
          f"{len(ev.assets)} assets (--json writes them)")
    if args.report is not None:
        write_report(ev, args.report)
        print(f"report: {args.report}")
    if args.json is not None:
        write_json(ev, args.json, src.note)
        print(f"json: {args.json}")
    print(ev.rate_line())
    return 0


_EPILOG = """\
Data sets (the bundle's manifest names its own; another --dataset/--subset only with
--force-subset):

  C-MAPSS (RUL bundles; official test set, every test engine scored):
      forewarn evaluate --bundle models/cmapss-fd002/<version> --key keys/signing.pub
      forewarn evaluate --bundle b/ --key k.pub --data ~/CMAPSSData     # FD003/FD004
  SKAB, the deployable bundle as trained (one model scores every file):
      forewarn evaluate --bundle models/skab-pca/<version> --key k.pub --data ~/SKAB
  SKAB, per-file refit (the benchmark protocol; a model fit per file, no bundle):
      forewarn evaluate --dataset skab --data ~/SKAB \\
          --config trainer/configs/skab_pca.toml [--holdout] --report r.html

Every figure printed and in the report says which of these produced it.

Alert rule: with --bundle, the bundle's own deployed rule - levels from its
thresholds, k of n, clear_after and cooldown_s from its manifest alert_policy
(schema 1/2 bundles: k=1 n=1 clear_after=3 cooldown_s=0) - run through the agent's
RuleMachine, so the alerts reported (--json: every opened / escalated / auto_cleared
event with the data_ts of its window) are the ones the agent raises on the same data
with no [alerts] overrides in its config. With --config, the config's [alerts] rule
on each file's own level.
"""


def register_evaluate(subparsers: Any) -> None:
    """Add ``evaluate`` to the ``forewarn`` CLI."""
    p = subparsers.add_parser(
        "evaluate", help="replay a labelled data set through the agent's logic; metrics + report",
        description=evaluate.__doc__, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="labelled data set (default: the one the bundle's manifest records)")
    add_data_argument(p, "data folder: a SKAB repository or its data/ folder; a folder of "
                         "C-MAPSS train_/test_/RUL_<subset>.txt[.gz] files (default: the "
                         "packaged FD001/FD002 copies)")
    p.add_argument("--config", type=Path, default=None,
                   help="anomaly training TOML: fit one model per file (SKAB per-file refit "
                        "protocol; figures of no deployable bundle)")
    p.add_argument("--bundle", type=Path, default=None,
                   help="bundle directory to evaluate as trained")
    p.add_argument("--key", type=Path, action="append", default=None,
                   help="trusted public key(s) for the bundle signature")
    p.add_argument("--allow-unsigned", action="store_true")
    p.add_argument("--subset", default=None,
                   help="C-MAPSS subset (default: the one the bundle's manifest records); "
                        "a different one is refused unless --force-subset")
    p.add_argument("--force-subset", action="store_true",
                   help="score --subset (or --dataset) although the bundle was trained on "
                        "another subset (data set)")
    p.add_argument("--holdout", nargs="?", const="group", choices=HOLDOUT_SPLITS, default=None,
                   help="SKAB with --config: choose the alert level and k-of-n rule on one "
                        "half of the files, report the other half, then swap (2-fold); "
                        "'group' (default) = valve1 vs valve2+other, 'alternate' = even vs "
                        "odd files")
    p.add_argument("--report", type=Path, default=None, help="write the HTML report here")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="write the figures, the alert rule applied and every alert event "
                        "(opened / escalated / auto_cleared with the window's data_ts, as "
                        "the agent publishes them) as JSON")
    p.set_defaults(func=_run)
