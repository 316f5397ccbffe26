"""``--data``: the one flag name for the data location of ``train``, ``evaluate`` and
``replay``, with the older ``--data-root`` spelling kept as a hidden alias."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEPRECATED = "--data-root"


class _DeprecatedData(argparse.Action):
    """Stores like ``--data`` and says once on stderr that the spelling is old: scripts
    written before the rename keep working, their authors learn the new name."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        print(f"{parser.prog}: {DEPRECATED} is deprecated; write --data", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_data_argument(p: argparse._ActionsContainer, help_text: str) -> None:
    """``--data PATH`` (dest ``data``) plus the hidden ``--data-root`` alias."""
    p.add_argument("--data", type=Path, default=None, metavar="PATH", help=help_text)
    p.add_argument(DEPRECATED, dest="data", type=Path, action=_DeprecatedData,
                   help=argparse.SUPPRESS)
