"""``python -m tests.faults.recording_agent CONFIG OUT``: the real agent, plus a score sink
that appends each scored window's ``asset end_ts`` to OUT.

One ``write(2)`` per batch, before the pipeline stores and acknowledges that batch:
the line is in the kernel when the process is SIGKILLed, so a test can tell every
window the agent scored, and how many times, across kills and restarts.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

from edge.app import Agent
from edge.core.config import load_config
from edge.models.infer import ScoredWindow


class FileRecorder:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def on_scores(self, windows: list[ScoredWindow]) -> None:
        if windows:
            os.write(self.fd, "".join(f"{w.asset} {w.ts!r}\n" for w in windows).encode())


def read_recorded(path: Path) -> list[tuple[str, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        asset, ts = line.split(" ")
        out.append((asset, float(ts)))
    return out


def main(config: Path, out: Path) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent = Agent(load_config(config))
    agent.pipeline.sinks.append(FileRecorder(out))
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    agent.start()
    while not done.wait(0.5):  # timed, as edge.cli.agent.run_agent does
        pass
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
