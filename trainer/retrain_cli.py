"""``forewarn retrain``: its command line (the run itself is :mod:`trainer.retrain`).

Settings come from the agent config's ``[retrain]`` section (``--config``), flags
override them. ``python -m trainer.retrain_cli`` is the same command where the
``forewarn.commands`` entry point is not installed yet.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.core.config import AgentConfig, RetrainConfig, load_config
from edge.core.errors import ConfigError, ForewarnError
from edge.history.export import parse_time
from edge.models.bundle import read_manifest
from edge.models.registry import Registry

if TYPE_CHECKING:  # scikit-learn, pyarrow: loaded when retrain runs, not by every command
    from trainer import triggers

DEFAULT_STATE_DIR = Path("/var/lib/forewarn")
EXIT_REFUSED = 3  # the gate refused: not a failure of the command (the unit's SuccessExitStatus)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}

_HELP = """\
Retrain the active model on this appliance's own history and the crew's verdicts,
then let the replay gate decide.

Training set: the history of the training period (--train, before the gate
period) of every asset; rows inside an alert the crew confirmed (plus
--fault-margin either side) are left out, rows inside a false alarm stay in
(they are normal: the model must learn them), rows inside the model's own alerts
that nobody judged are left out too unless --unjudged normal. The model is refit
with the training config recorded in the active bundle (same family, signals,
window, features, alert rule, calibration method).

Gate: candidate and active are replayed over the gate period (--gate, the most
recent history, never trained on) with their own alert policies. Accepted iff
the candidate still catches every confirmed fault the active catches and its
false-alarm rate (alert-open windows outside confirmed faults / windows outside
confirmed faults) is not higher. The HTML report (score traces, alert spans,
faults, counts) and gate.json go to <state_dir>/retrain/<run>/ and the audit log
either way. Accepted: the candidate is signed with the retrain key, installed
and set as the registry CANDIDATE (the staged rollout takes it from there).
Refused: nothing is installed.

--if-needed first checks the triggers and retrains only when one fires: the
drift alarm on for retrain.drift_alarm_hours, live precision more than
retrain.precision_drop_points below the bundle's figure, or (when set) the
active version older than retrain.max_model_age_days. It does nothing while a
candidate is already in rollout.

Exit status: 0 accepted (or nothing to do), 3 refused by the gate, 2 error.
Durations: a number with s, m, h or d (90m, 24h, 14d); a bare number is seconds.
"""


def parse_duration(text: str) -> float:
    """Seconds from ``90m``, ``24h``, ``14d``, ``3600`` or ``2.5h``.

    >>> parse_duration("24h"), parse_duration("90m"), parse_duration("30")
    (86400.0, 5400.0, 30.0)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"duration {text!r}: expected a positive number with s, m, h or d "
                          "(e.g. 24h)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def register(subparsers: Any) -> None:
    """Add ``retrain`` to the ``forewarn`` CLI (entry point ``forewarn.commands``)."""
    p = subparsers.add_parser("retrain", help="retrain the active model on local history "
                              "and verdicts, through the replay gate", description=_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=_run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, help="agent TOML: state_dir, bundle.name, "
                   "bundle.trusted_keys, [alerts] overrides and [retrain]")
    p.add_argument("--state-dir", type=Path, help=f"agent state directory (default "
                   f"{DEFAULT_STATE_DIR} or the config's)")
    p.add_argument("--model", help="model name (default: the config's bundle, or the "
                   "registry's only model)")
    p.add_argument("--trusted-key", type=Path, action="append",
                   help="trusted public key file or directory (repeatable; default the "
                        "config's bundle.trusted_keys)")
    p.add_argument("--key", type=Path, help="private key signing the candidate (default "
                   "retrain.key)")
    p.add_argument("--train", type=parse_duration, help="training period before the gate "
                   "period (default retrain.train_days)")
    p.add_argument("--gate", type=parse_duration, help="gate period: the most recent "
                   "history, held back (default retrain.gate_hours)")
    p.add_argument("--until", type=parse_time, help="end of the gate period, UTC time or "
                   "epoch s (default: just after the newest reading)")
    p.add_argument("--fault-margin", type=float, metavar="SECONDS",
                   help="added either side of a confirmed alert (default "
                        "retrain.fault_margin_s, else 2 x (window + n x hop) periods)")
    p.add_argument("--unjudged", choices=("exclude", "normal"),
                   help="the model's alerts without a verdict: leave out (default) or "
                        "train on as normal")
    p.add_argument("--max-windows", type=int, help="training windows at most "
                   "(default retrain.max_windows)")
    p.add_argument("--label-signal", help="a history signal holding 0/1 fault labels: "
                   "labelled rows never train and are confirmed faults in the gate")
    p.add_argument("--asset", action="append", help="only this asset (repeatable)")
    p.add_argument("--candidate", type=Path, help="gate this bundle (signed, same model "
                   "name) instead of fitting one")
    p.add_argument("--if-needed", action="store_true",
                   help="check the triggers first; retrain only when one fires")
    p.add_argument("--dry-run", action="store_true",
                   help="fit and gate, write the report, install nothing")
    p.add_argument("--replace-candidate", action="store_true",
                   help="replace a candidate already in rollout")
    p.add_argument("--allow-unsigned", action="store_true",
                   help="development only: accept unsigned bundles")
    p.add_argument("--actor", help="who is acting, for the audit log (default cli:<user>, "
                   "or retrain with --if-needed)")
    p.add_argument("--json", action="store_true", help="print the gate's figures as JSON")


def _model_name(args: argparse.Namespace, cfg: AgentConfig | None, registry: Registry) -> str:
    if args.model:
        return str(args.model)
    if cfg is not None and cfg.bundle.name:
        return str(cfg.bundle.name)
    if cfg is not None and cfg.bundle.path is not None:
        return read_manifest(cfg.bundle.path / "manifest.json").name
    names = registry.names()
    if len(names) != 1:
        raise ConfigError(f"{registry.root}: {len(names)} models installed "
                          f"({', '.join(names) or 'none'}): name one with --model")
    return names[0]


def _check(state: Path, registry: Registry, name: str, r: RetrainConfig) -> list[triggers.Trigger]:
    from trainer import triggers
    from trainer.retrain import ALERTS_FILE

    bundle = registry.load(name)
    m = bundle.manifest
    entry = next(e for e in registry.list() if e.name == name and e.active)
    return [triggers.drift(state, bundle.ident, r.drift_alarm_hours),
            triggers.precision(state / ALERTS_FILE, m, r.precision_drop_points,
                               r.min_verdicts),
            triggers.age(entry.installed, time.time(), r.max_model_age_days)]


def _run(args: argparse.Namespace) -> int:
    from trainer.retrain import Plan, run

    cfg = load_config(args.config) if args.config else None
    r = cfg.retrain if cfg is not None else RetrainConfig()
    state = args.state_dir or (cfg.state_dir if cfg is not None else DEFAULT_STATE_DIR)
    keys = args.trusted_key or (list(cfg.bundle.trusted_keys) if cfg is not None else [])
    unsigned = args.allow_unsigned or (cfg is not None and cfg.bundle.allow_unsigned)
    registry = Registry(Path(state) / "models", keys, unsigned)
    name = _model_name(args, cfg, registry)
    trigger = "person"
    actor = args.actor or ("retrain" if args.if_needed else f"cli:{getpass.getuser()}")
    if args.if_needed:
        checks = _check(Path(state), registry, name, r)
        for t in checks:
            print(t.line())
        fired = [t for t in checks if t.fired]
        pending = registry.pointers(name).candidate
        if not fired:
            print("no trigger fired: nothing to do")
            return 0
        if pending is not None and not args.replace_candidate:
            print(f"{name}/{pending} is already in rollout: not retraining meanwhile")
            return 0
        trigger = "; ".join(f"{t.name} ({t.detail})" for t in fired)
        print(f"trigger fired: {', '.join(t.name for t in fired)}")
    plan = Plan(
        state_dir=Path(state), model=name, trusted_keys=keys, key=args.key or r.key,
        train_s=args.train or r.train_days * 86_400.0,
        gate_s=args.gate or r.gate_hours * 3600.0, allow_unsigned=unsigned,
        agent_alerts=cfg.alerts if cfg is not None else None, until=args.until,
        fault_margin_s=args.fault_margin if args.fault_margin is not None
        else r.fault_margin_s, unjudged=args.unjudged or r.unjudged,
        max_windows=args.max_windows or r.max_windows, label_signal=args.label_signal,
        assets=args.asset, actor=actor, trigger=trigger, candidate=args.candidate,
        dry_run=args.dry_run, replace_candidate=args.replace_candidate)
    out = run(plan)
    if args.json:
        print(json.dumps(out.figures, indent=1, default=str))
    else:
        a, c = out.figures["active"], out.figures["candidate"]
        print(f"{'ACCEPTED' if out.accepted else 'REFUSED'} {out.candidate} against "
              f"{out.figures['active_model']}")
        for why in out.reasons:
            print(f"  {why}")
        print(f"  false-alarm windows: active {a['false_alarm_windows']} of "
              f"{a['healthy_windows']} ({a['false_alarm_rate']:.2%}), candidate "
              f"{c['false_alarm_windows']} of {c['healthy_windows']} "
              f"({c['false_alarm_rate']:.2%})")
        print(f"  confirmed faults caught: active {a['faults_caught']} of {a['faults']}, "
              f"candidate {c['faults_caught']} of {c['faults']}")
        print(f"  report: {out.report}")
        if out.installed:
            print(f"  installed and set as the candidate of {name}")
    return 0 if out.accepted else EXIT_REFUSED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forewarn retrain", description=_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ForewarnError as exc:
        print(f"forewarn retrain: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
