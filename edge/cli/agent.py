"""``forewarn agent``: run the edge agent, or only check its config and bundle."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from edge.core.errors import ConfigError, ForewarnError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help="run the edge agent",
                       description="Run the edge agent with one TOML config file.")
    p.add_argument("--config", "-c", type=Path, required=True, help="agent TOML config")
    p.add_argument("--check-config", action="store_true",
                   help="validate the config and the bundle, print problems, exit")

    def run(args: argparse.Namespace) -> int:
        if args.check_config:
            return check_config(args.config)
        return run_agent(args.config)

    p.set_defaults(func=run)


def check_config(path: Path) -> int:
    """``--check-config``: validate the config and the bundle, print problems, exit code."""
    # Imported here: the parser must not load onnxruntime, nor the agent's stack.
    from edge.api.serve import check_tls
    from edge.core.config import load_config
    from edge.models.bundle import load_bundle
    from edge.models.infer import scorer_for
    from edge.models.registry import Registry

    try:
        cfg = load_config(path)
        b = cfg.bundle
        registry = Registry(Path(cfg.state_dir) / "models", b.trusted_keys, b.allow_unsigned,
                            site_keys=b.site_keys)
        if b.name and registry.pointers(b.name).active:
            bundle = registry.load(b.name)
        elif b.path is not None:
            bundle = load_bundle(b.path, b.trusted_keys, allow_unsigned=b.allow_unsigned,
                                 site_keys=b.site_keys)
        else:
            raise ConfigError(f"bundle.name = {b.name!r} has no installed version and no "
                              "bundle.path is given")
        scorer_for(bundle)
        check_tls(cfg.api)
    except ForewarnError as exc:
        print(f"{exc}")
        return 1
    print(f"{path}: OK (site {cfg.site}, bundle {bundle.ident})")
    return 0


def run_agent(path: Path) -> int:
    from edge.api.serve import check_tls
    from edge.app import Agent
    from edge.core.config import load_config

    try:
        cfg = load_config(path)
        check_tls(cfg.api)
    except ConfigError as exc:
        print(exc)
        return 2
    logging.getLogger().setLevel(cfg.log_level)
    agent = Agent(cfg)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    agent.start()
    # A timed wait: the kernel may deliver SIGTERM to any thread, and Python runs the
    # handler only when the main thread executes bytecode. An untimed wait left the
    # agent running after SIGTERM under strace (tests/faults/test_access.py).
    while not done.wait(0.5):
        pass
    agent.stop()
    return 0
