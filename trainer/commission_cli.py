"""``forewarn commission``: learn each learning asset's parameters for the template in use.

Runs beside the agent, in its own process (scikit-learn-free, but numpy- and
onnxruntime-heavy: the systemd unit ``forewarn-commission.service`` caps its CPU,
memory and priority so the agent's alert latency holds). It reads the agent's
config for the state directory, the template and the alert rule, the history
read-only, and writes only site parameters bundles (signed with the site key,
installed through the registry, audited) and ``commissioning/verdicts.json``.

Also runnable as ``python -m trainer.commission_cli`` (no entry point needed).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from edge.core.errors import ForewarnError

DEFAULT_KEY = Path("keys") / "site.key"

_HELP = """\
Learn the per-asset parameters of a template bundle on site.

An asset under a template is `learning` (no model alerts) until this command has
fitted its parameters on its own first rows (the template's commissioning.rows),
verified them on a held-back tail and installed them; then it is `ready` and
scores. Refused data (a stuck signal, too many gaps, a tail that would alarm)
marks it `insufficient_data` with the reason; `--retry` learns it again.

--once makes one pass over the learning assets and exits (the systemd timer and
tests); without it the command repeats every --interval seconds until SIGTERM.
The site key signs the parameters: `forewarn keys generate --site --config
<agent.toml>`, and list its .pub under bundle.site_keys in the agent config.
"""


def _report(out: Any) -> Any:
    def show(i: int, n: int, o: Any) -> None:
        tail = f" [{o.version}]" if o.version else ""
        print(f"[{i}/{n}] {o.asset}: {o.state}{tail}: {o.detail}", file=out, flush=True)
    return show


def run(args: argparse.Namespace) -> int:
    from edge.alerts.rules import RuleSpec
    from edge.core.audit import AuditLog
    from edge.core.config import load_config
    from edge.models.bundle import load_bundle
    from edge.models.registry import Registry
    from edge.models.signing import load_private_key
    from edge.models.sitestore import SiteParamsRegistry
    from trainer.commission import commission_pass

    cfg = load_config(args.config)
    b, state = cfg.bundle, Path(cfg.state_dir)
    key = load_private_key(args.key if args.key else state / DEFAULT_KEY)
    audit = AuditLog(state / "audit.jsonl")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while True:
        if b.name is not None:
            template = Registry(state / "models", b.trusted_keys, b.allow_unsigned).load(b.name)
        else:
            assert b.path is not None
            template = load_bundle(b.path, b.trusted_keys, allow_unsigned=b.allow_unsigned)
        sites = SiteParamsRegistry(state / "models", b.trusted_keys, audit,
                                   site_keys=b.site_keys)
        rule = RuleSpec.from_manifest(template.manifest, cfg.alerts)
        spec = template.manifest.commissioning
        print(f"commissioning under {template.ident} (first {spec.rows if spec else '?'} rows "
              "per asset)", file=sys.stderr, flush=True)
        out = commission_pass(template, rule, state, key, sites, assets=args.asset or None,
                              retry=args.retry, report=_report(sys.stderr), stop=stop.is_set)
        counts: dict[str, int] = {}
        for o in out:
            counts[o.state] = counts.get(o.state, 0) + 1
        print("pass done: " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
                               or "no learning assets"), file=sys.stderr, flush=True)
        if args.once or stop.wait(args.interval):
            return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, required=True,
                   help="the agent's TOML config (state directory, template, alert rule)")
    p.add_argument("--key", type=Path, default=None,
                   help=f"site private key (PEM, 0600; default <state_dir>/{DEFAULT_KEY})")
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    p.add_argument("--interval", type=float, default=300.0,
                   help="seconds between passes without --once (default: %(default)s)")
    p.add_argument("--asset", action="append", default=[],
                   help="only this asset (repeatable; default: every learning asset)")
    p.add_argument("--retry", action="store_true",
                   help="learn assets refused before (insufficient_data) again")


def register(sub: Any) -> None:
    """Add ``commission`` to the ``forewarn`` CLI (entry point ``forewarn.commands``)."""
    p = sub.add_parser("commission", help="learn each asset's parameters for a template "
                       "bundle (commissioning)", description=_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    import logging

    p = argparse.ArgumentParser(prog="forewarn commission", description=_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except ForewarnError as exc:
        print(f"forewarn commission: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
