"""Durable small writes: what survives a power cut, not only a crash.

A file is durable once its bytes are fsync'd and the directory entry naming it is
fsync'd too; a pointer (``ACTIVE``, ``PREVIOUS``, …) is replaced atomically, so a
reader sees the old name or the new one, never half of either.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_path(p: Path) -> None:
    """fsync a file or a directory by its path (a directory: the names in it)."""
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_pointer(target: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``target`` with ``text`` + newline atomically and durably.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> write_pointer(d / "ACTIVE", "3"); write_pointer(d / "ACTIVE", "4")
    >>> (d / "ACTIVE").read_text(), sorted(p.name for p in d.iterdir())
    ('4\\n', ['ACTIVE'])
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(target.parent)


def seal_into(stage: Path, dest: Path, info_file: str, info: dict[str, Any]) -> None:
    """Move a verified staging directory to ``dest`` read-only, with an info file.

    Every member is made read-only and fsync'd before the rename, and the parent
    after it, so an installed directory is whole after a power cut or absent.
    """
    (stage / info_file).write_text(json.dumps(info, indent=1) + "\n")
    for member in stage.iterdir():
        member.chmod(0o444)
        fsync_path(member)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(stage, dest)
    dest.chmod(0o555)
    fsync_path(dest.parent)


@contextmanager
def registry_lock(root: Path) -> Iterator[None]:
    """The models directory's one lock file (an flock): model installs, pointer moves
    and site parameter installs never interleave, across processes."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
