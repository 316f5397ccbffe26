"""``forewarn model install|list|promote|rollback|candidate|rollout`` and ``forewarn audit verify``.

The registry lives in ``<state_dir>/models`` and the audit log in
``<state_dir>/audit.jsonl``. ``--config`` reads both, and the trusted keys, from
the agent's TOML; ``--state-dir`` and ``--key`` override it or stand alone.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edge.core.audit import AuditLog, head, verify
from edge.core.config import load_config
from edge.core.errors import ConfigError, ForewarnError

if TYPE_CHECKING:
    from edge.models.registry import Registry

Subparsers = argparse._SubParsersAction  # argparse has no public name for it
DEFAULT_STATE_DIR = Path("/var/lib/forewarn")
AUDIT_FILE = "audit.jsonl"


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    _model(sub)
    _audit(sub)


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", "-c", type=Path,
                   help="agent TOML: takes state_dir, bundle.trusted_keys, bundle.site_keys, "
                        "bundle.allow_unsigned")
    p.add_argument("--state-dir", type=Path,
                   help=f"agent state directory (default {DEFAULT_STATE_DIR} or the config's)")
    p.add_argument("--key", type=Path, action="append",
                   help="trusted (central) public key file or directory (repeatable)")
    p.add_argument("--site-key", type=Path, action="append",
                   help="site public key file or directory (repeatable): may sign only site "
                        "parameters of a centrally signed template")
    p.add_argument("--allow-unsigned", action="store_true",
                   help="development only: accept bundles without SIGNATURE")
    p.add_argument("--actor", help="who is acting, for the audit log (default cli:<user>)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _model(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("model", help="install, list, promote and roll back model bundles",
                       description="Manage the appliance's model registry "
                                   "(<state_dir>/models). Every change is audited.")
    ms = p.add_subparsers(dest="model_cmd", required=True)
    common = _common()
    i = ms.add_parser("install", parents=[common],
                      help="verify (signature, graph, self-test) and add a bundle")
    i.add_argument("source", type=Path, help="bundle directory or .tar.gz")
    i.set_defaults(func=_install)
    ls = ms.add_parser("list", parents=[common], help="installed versions and pointers")
    ls.set_defaults(func=_list)
    pr = ms.add_parser("promote", parents=[common], help="make a version active")
    pr.add_argument("name")
    pr.add_argument("version")
    pr.set_defaults(func=_promote)
    rb = ms.add_parser("rollback", parents=[common], help="return to the previous version")
    rb.add_argument("name")
    rb.add_argument("--reason", default="", help="why, for the audit log")
    rb.set_defaults(func=_rollback)
    ca = ms.add_parser("candidate", parents=[common],
                       help="set (or --clear) the shadow/canary candidate")
    ca.add_argument("name")
    ca.add_argument("version", nargs="?")
    ca.add_argument("--clear", action="store_true", help="remove the candidate")
    ca.add_argument("--reason", default="", help="why, for the audit log")
    ca.set_defaults(func=_candidate)
    from edge.cli.rollout import register as rollout

    rollout(ms, common)


def _audit(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="check the audit trail",
                       description="Check the hash chain of an audit log.")
    aus = p.add_subparsers(dest="audit_cmd", required=True)
    v = aus.add_parser("verify", help="verify every entry's hash and link")
    v.add_argument("path", type=Path, help="audit log (e.g. /var/lib/forewarn/audit.jsonl)")
    v.add_argument("--expect-head", metavar="HASH",
                   help="a head hash recorded earlier; fails if it is no longer in the chain")
    v.set_defaults(func=_verify)


# -- handlers -------------------------------------------------------------------

def _registry(args: argparse.Namespace) -> Registry:
    from edge.models.registry import Registry  # imports onnxruntime: only for model commands

    state_dir, keys, unsigned = args.state_dir, args.key or [], args.allow_unsigned
    site_keys = args.site_key or []
    if args.config is not None:
        cfg = load_config(args.config)
        state_dir = state_dir or cfg.state_dir
        keys = keys or list(cfg.bundle.trusted_keys)
        site_keys = site_keys or list(cfg.bundle.site_keys)
        unsigned = unsigned or cfg.bundle.allow_unsigned
    state_dir = Path(state_dir or DEFAULT_STATE_DIR)
    if not state_dir.is_dir():
        raise ConfigError(f"{state_dir}: state directory does not exist (--state-dir or "
                          "--config)")
    return Registry(state_dir / "models", keys, allow_unsigned=unsigned,
                    audit=AuditLog(state_dir / AUDIT_FILE), site_keys=site_keys)


def _actor(args: argparse.Namespace) -> str:
    if args.actor:
        return str(args.actor)
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return f"cli:{user}"


def _need_keys(reg: Registry) -> None:
    if not reg.trusted_keys and not reg.allow_unsigned:
        raise ConfigError("no trusted keys: pass --key <public key> or --config <agent.toml> "
                          "with bundle.trusted_keys")


def _install(args: argparse.Namespace) -> int:
    reg = _registry(args)
    _need_keys(reg)
    e = reg.install(args.source, actor=_actor(args))
    if args.json:
        print(json.dumps(e.to_dict()))
    else:
        state = "active" if e.active else "not active; promote it to score with it"
        what = f"site parameters for {e.template}; " if e.kind == "site_params" else ""
        print(f"{e.status} {e.name}/{e.version} ({what}signed by {e.signed_by or 'nobody'}; "
              f"{state}) at {e.path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    entries = _registry(args).list()
    if args.json:
        print(json.dumps([e.to_dict() for e in entries]))
        return 0
    if not entries:
        print("no bundles installed")
        return 0
    print(f"{'NAME':<24} {'VERSION':<12} {'STATE':<10} {'INSTALLED':<20} {'SIGNED BY':<17} "
          "METRICS")
    for e in entries:
        state = ",".join(s for s, on in (("active", e.active), ("previous", e.previous),
                                         ("candidate", e.candidate)) if on) or "-"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.installed))
        metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(e.metrics.items())[:4])
        print(f"{e.name:<24} {e.version:<12} {state:<10} {when:<20} "
              f"{e.signed_by or '-':<17} {metrics}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    reg = _registry(args)
    _need_keys(reg)
    before = reg.pointers(args.name).active
    after = reg.promote(args.name, args.version, actor=_actor(args))
    if before == args.version:
        msg = f"{args.name}: {args.version} already active"
    else:
        msg = f"{args.name}: {args.version} is now active (previous {after.previous or '-'})"
    print(json.dumps({"result": msg, **after.__dict__}) if args.json else msg)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    reg = _registry(args)
    _need_keys(reg)
    after = reg.rollback(args.name, actor=_actor(args), reason=args.reason)
    msg = f"{args.name}: rolled back to {after.active} ({after.previous} is now previous)"
    print(json.dumps({"result": msg, **after.__dict__}) if args.json else msg)
    return 0


def _candidate(args: argparse.Namespace) -> int:
    if args.clear == (args.version is not None):
        raise ConfigError("give either a VERSION or --clear")
    reg = _registry(args)
    _need_keys(reg)
    after = reg.set_candidate(args.name, None if args.clear else args.version,
                              actor=_actor(args), reason=args.reason)
    msg = f"{args.name}: candidate {after.candidate or 'cleared'}"
    print(json.dumps({"result": msg, **after.__dict__}) if args.json else msg)
    return 0


def _verify(args: argparse.Namespace) -> int:
    res = verify(args.path, expect_head=args.expect_head)
    if not res.ok:
        print(f"FAILED {res.reason} ({res.n_entries} entries verified before it)",
              file=sys.stderr)
        return 1
    seq, h = head(args.path)
    print(f"OK {args.path}: {res.n_entries} entries, chain intact; head seq {seq} hash {h}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m edge.cli.models model list``); ``forewarn`` embeds register."""
    parser = argparse.ArgumentParser(prog="forewarn")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ForewarnError as exc:
        print(f"forewarn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
