"""``forewarn sessions list|revoke``: the crew page's signed-in devices, from a shell.

Works on ``<state_dir>/sessions.sqlite`` (see :mod:`edge.api.sessions`) while the
agent runs (SQLite WAL); a revocation takes effect on the device's next request
and is written to the agent's audit log.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edge.api.sessions import SessionStore
from edge.cli.models import AUDIT_FILE, DEFAULT_STATE_DIR
from edge.core.audit import AuditLog
from edge.core.config import load_config
from edge.core.errors import ConfigError

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction

SESSIONS_FILE = "sessions.sqlite"


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sessions", help="list or revoke the crew page's signed-in devices",
                       description="Devices signed in on the crew page (remembered sessions). "
                                   "Revocations are audited.")
    ss = p.add_subparsers(dest="sessions_cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", type=Path, help="agent TOML (takes state_dir)")
    common.add_argument("--state-dir", type=Path,
                        help=f"agent state directory (default {DEFAULT_STATE_DIR})")
    ls = ss.add_parser("list", parents=[common], help="live sessions: person, device, expiry")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_list)
    rv = ss.add_parser("revoke", parents=[common], help="sign one device out")
    rv.add_argument("id", type=int, help="session id (from 'forewarn sessions list')")
    rv.add_argument("--actor", help="who is acting, for the audit log (default cli:<user>)")
    rv.set_defaults(func=_revoke)


def _state_dir(args: argparse.Namespace) -> Path:
    state = args.state_dir
    if state is None and args.config is not None:
        state = load_config(args.config).state_dir
    state = Path(state or DEFAULT_STATE_DIR)
    if not state.is_dir():
        raise ConfigError(f"{state}: state directory does not exist (--state-dir or --config)")
    return state


def _store(state: Path) -> SessionStore:
    # Lifetime only matters for new sessions, which the CLI never creates.
    return SessionStore(state / SESSIONS_FILE, lifetime_s=0.0)


def _list(args: argparse.Namespace) -> int:
    store = _store(_state_dir(args))
    items = store.list()
    store.close()
    if args.json:
        print(json.dumps([s.to_dict() for s in items]))
        return 0
    if not items:
        print("no signed-in devices")
    for s in items:
        ends = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.expires))
        print(f"{s.id:>5}  {s.person:<20} {s.device:<24} until {ends}  from {s.client}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    state = _state_dir(args)
    store = _store(state)
    s = store.revoke(args.id)
    store.close()
    if s is None:
        raise ConfigError(f"{state / SESSIONS_FILE}: no live session {args.id}")
    actor = args.actor or f"cli:{os.environ.get('SUDO_USER') or getpass.getuser()}"
    AuditLog(state / AUDIT_FILE).write(action="session_revoke", person=actor,
                                       target=f"session/{s.id}", device=s.device,
                                       session_person=s.person, client="cli")
    print(f"revoked session {s.id}: {s.person} on {s.device}")
    return 0
