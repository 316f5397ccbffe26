"""``forewarn-fleet serve`` and ``forewarn fleet serve`` (through the entry-point group)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edge.core.errors import ForewarnError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("fleet", help="central fleet service (receives the sites' reports)",
                       description="The central fleet service.")
    fs = p.add_subparsers(dest="fleet_cmd", required=True)
    s = fs.add_parser("serve", help="collect reports from the cloud broker, serve the page")
    s.add_argument("--config", "-c", type=Path, required=True, help="fleet TOML config")

    def run(args: argparse.Namespace) -> int:
        from fleet.service import serve

        return serve(args.config)

    s.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forewarn-fleet")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    # `forewarn-fleet [-v] serve ...` is `forewarn [-v] fleet serve ...`
    rest = list(sys.argv[1:] if argv is None else argv)
    flags = [a for a in rest[:1] if a in ("-v", "--verbose")]
    args = parser.parse_args([*flags, "fleet", *rest[len(flags):]])
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ForewarnError as exc:
        print(f"forewarn-fleet: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
