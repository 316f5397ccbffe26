"""``forewarn model rollout status|pause|resume|advance|abort NAME``.

Works on the state directory like the other model commands (``--config`` or
``--state-dir``); a running agent follows at its next registry poll. Every
step is audited with the actor (``--actor``, default ``cli:<user>``).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.models.stages import WalkState

HELP = {
    "status": "where the candidate's staged rollout is (stage, share, hold, pause, history)",
    "pause": "stop the hold timer (the judge keeps judging and still rolls back)",
    "resume": "start the hold timer again",
    "advance": "skip the rest of the current stage's hold (from the last stage: promote)",
    "abort": "roll the candidate back now (the active model keeps scoring)",
}


def register(ms: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    p = ms.add_parser("rollout", help="the candidate's staged rollout: status, pause, resume, "
                                      "advance, abort",
                      description="Control the staged rollout of a model's candidate "
                                  "(bundle.rollout = 'staged'). Every step is audited.")
    rs = p.add_subparsers(dest="rollout_cmd", required=True)
    for op, text in HELP.items():
        c = rs.add_parser(op, parents=[common], help=text, description=text + ".")
        c.add_argument("name", help="model name")
        if op != "status":
            c.add_argument("--reason", default="", help="why, for the audit log")
        c.set_defaults(func=_status if op == "status" else _control, rollout_op=op)


def _status(args: argparse.Namespace) -> int:
    from edge.cli.models import _registry
    from edge.models.walkstore import WalkStore

    st = WalkStore(_registry(args)).load(args.name)
    if args.json:
        print(json.dumps({"walk": None if st is None else st.summary(history=64)}))
        return 0
    if st is None:
        print(f"{args.name}: no staged rollout (set a candidate: forewarn model candidate "
              f"{args.name} VERSION)")
        return 0
    print("\n".join(describe(st)))
    return 0


def _control(args: argparse.Namespace) -> int:
    from edge.cli.models import _actor, _need_keys, _registry
    from edge.models.walkstore import control

    reg = _registry(args)
    if args.rollout_op == "advance":
        _need_keys(reg)  # advancing from the last stage promotes: the bundle is re-verified
    st, step = control(reg, args.name, args.rollout_op, _actor(args), args.reason)
    if args.json:
        print(json.dumps({"walk": st.summary(), "step": step.to_dict()}))
        return 0
    to = f" -> {step.to}" if step.to else ""
    print(f"{st.ident}: {step.event} ({step.stage}{to}); now {status_line(st)}")
    return 0


def status_line(st: WalkState) -> str:
    stage = st.current
    if st.status != "running" or stage is None:
        return f"{st.status.replace('_', ' ')}" + (f": {st.reason}" if st.reason else "")
    pause = f", paused by {st.paused_by}" if st.paused else ""
    wait = f"; {st.waiting}" if st.waiting else ""
    return (f"{stage.label} (stage {st.stage + 1} of {len(st.stages)}), held "
            f"{_dur(st.held_s)} of {_dur(stage.hold_s)}{pause}{wait}")


def describe(st: WalkState) -> list[str]:
    walk = " -> ".join(s.label for s in st.stages) + " -> 100 %"
    lines = [f"{st.ident}: {status_line(st)}", f"  walk: {walk}",
             f"  started {_when(st.started)}; the running agent saves the hold every ~15 s"]
    for e in st.history[-12:]:
        to = f" -> {e['to']}" if e.get("to") else ""
        why = f": {e['reason']}" if e.get("reason") else ""
        lines.append(f"  {_when(e['ts'])}  {e['event']:<11} {e['stage']}{to} by "
                     f"{e['actor']}{why}")
    return lines


def _dur(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _when(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts)))
