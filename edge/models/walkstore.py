"""Where a staged walk is kept, and the person's controls on it (CLI and API alike).

The walk of a model's candidate is ``<registry>/<name>/ROLLOUT.json``, beside the
ACTIVE/CANDIDATE pointers, so a restarted agent resumes its stage and hold. The
agent (as holds run and judges decide) and a person (``forewarn model rollout
pause|resume|advance|abort``, or the API) both change it, each under an
``flock`` on ``<registry>/<name>/.rollout.lock`` held across the pointer change
the step makes; the file is replaced atomically. Lock order: this lock, then
the registry's.

Every step lands in the audit log as ``model.rollout.<event>`` with its actor.
A step that moves a pointer moves it first (the registry audits that too), is
audited, then saves the walk: a crash in between leaves a walk the agent closes
as ``ended`` because its candidate is gone, never a candidate whose walk looks
finished, and a saved step is always in the audit log.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from edge.core.audit import AuditLog
from edge.core.errors import BundleError, StorageError
from edge.models.registry import Registry
from edge.models.stages import StagedWalk, Step, WalkState

WALK_FILE = "ROLLOUT.json"
LOCK_FILE = ".rollout.lock"
Control = Literal["pause", "resume", "advance", "abort"]
CONTROLS: tuple[Control, ...] = ("pause", "resume", "advance", "abort")


class WalkStore:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def _dir(self, name: str) -> Path:
        self.registry.pointers(name)  # checks the name before it becomes a path
        d = self.registry.root / name
        if not d.is_dir():
            raise BundleError(f"model {name!r} is not installed (installed: "
                              f"{', '.join(self.registry.names()) or 'none'})")
        return d

    @contextmanager
    def locked(self, name: str) -> Iterator[None]:
        fd = os.open(self._dir(name) / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def load(self, name: str) -> WalkState | None:
        path = self._dir(name) / WALK_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StorageError(f"{path}: cannot read the staged rollout ({exc}); move the "
                               "file aside to start the candidate's walk again") from exc
        try:
            st = WalkState.from_dict(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError(f"{path}: not a staged rollout record ({exc!r}); move the file "
                               "aside to start the candidate's walk again") from exc
        if st.name != name:
            raise StorageError(f"{path}: names model {st.name!r}, not {name!r}")
        return st

    def save(self, state: WalkState) -> None:
        d = self._dir(state.name)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{WALK_FILE}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(state.to_dict(), f, indent=1, allow_nan=False)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, d / WALK_FILE)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise StorageError(f"{d / WALK_FILE}: cannot save the staged rollout ({exc})") \
                from exc
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def record(audit: AuditLog, state: WalkState, step: Step, **extra: object) -> None:
    """The audit entry of one step: ``model.rollout.<event>``, by its actor."""
    stage = state.stages[state.stage] if state.stage < len(state.stages) else None
    audit.record(step.actor, f"model.rollout.{step.event}", name=state.name,
                 version=state.version, stage=step.stage, to=step.to, reason=step.reason,
                 rule=step.rule or None, share=stage.share if stage else 1.0,
                 held_s=round(state.held_s, 3), n=step.n, **extra)


def carry_out(registry: Registry, state: WalkState, step: Step) -> Step:
    """Move the pointers a step needs: a promotion makes the candidate ACTIVE, a rollback
    or an abort clears CANDIDATE. Returns the step (a refused promotion becomes a rollback)."""
    if step.event == "promoted":
        try:
            registry.promote(state.name, state.version, actor=step.actor)
        except BundleError as exc:
            # Promotion re-verifies the bundle (edited on disk?): never walk it further.
            step = StagedWalk(state).undo_promotion(step.ts, f"promotion refused: {exc}")
            return carry_out(registry, state, step)
    elif step.event in ("rolled_back", "aborted"):
        what = "automatic rollback" if step.event == "rolled_back" else "rollout aborted"
        if registry.pointers(state.name).candidate == state.version:
            registry.set_candidate(state.name, None, actor=step.actor,
                                   reason=f"{what}: {step.reason}")
    return step


def control(registry: Registry, name: str, op: Control, actor: str, reason: str = "",
            now: float | None = None) -> tuple[WalkState, Step]:
    """A person pauses, resumes, advances or aborts the running walk of ``name``.

    BundleError (refused, audited) when no walk runs or the step does not apply;
    the running agent follows on its next registry poll.
    """
    store = WalkStore(registry)
    t = time.time() if now is None else now
    with store.locked(name):
        st = store.load(name)
        try:
            if st is None:
                raise ValueError(f"model {name!r} has no staged rollout (set a candidate with "
                                 "'forewarn model candidate' while bundle.rollout = 'staged')")
            walk = StagedWalk(st)
            step = getattr(walk, op)(actor, t, reason)
        except ValueError as exc:
            registry.audit.record(actor, f"model.rollout.{op}", name=name, reason=reason,
                                  result="refused", error=str(exc))
            raise BundleError(str(exc)) from None
        step = carry_out(registry, st, step)
        record(registry.audit, st, step, result="ok")
        store.save(st)
    return st, step
