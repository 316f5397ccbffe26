"""The ``forewarn`` command.

Agent-side commands live here; the trainer's (train, evaluate, replay, demo) plug
in through the ``forewarn.commands`` entry-point group, so an appliance installed
without the training extra still has a working CLI and never imports scikit-learn.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from edge import __version__
from edge.core.errors import ForewarnError

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _keys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keys", help="manage bundle signing keys",
                       description="Manage Ed25519 keys that sign model bundles.")
    ks = p.add_subparsers(dest="keys_cmd", required=True)
    g = ks.add_parser("generate", help="create a key pair (private key mode 0600)")
    g.add_argument("--out", type=Path, default=Path("keys"),
                   help="directory for signing.key and signing.pub (default: keys)")
    g.add_argument("--name", default="signing", help="file stem (default: signing)")
    g.add_argument("--force", action="store_true", help="overwrite an existing pair")

    def run(args: argparse.Namespace) -> int:
        from edge.models.signing import generate_keypair

        priv = args.out / f"{args.name}.key"
        pub = args.out / f"{args.name}.pub"
        kid = generate_keypair(priv, pub, overwrite=args.force)
        print(f"wrote {priv} (private, 0600) and {pub} (public); key id {kid}")
        print("give the .pub file to every appliance (bundle.trusted_keys); keep the .key secret")
        return 0

    g.set_defaults(func=run)


def _bundle(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bundle", help="inspect and verify model bundles",
                       description="Inspect and verify model bundles.")
    bs = p.add_subparsers(dest="bundle_cmd", required=True)
    v = bs.add_parser("verify", help="check signature, manifest, graph and self-test")
    v.add_argument("path", type=Path, help="bundle directory or .tar.gz")
    v.add_argument("--key", "--trusted-keys", dest="key", type=Path, action="append",
                   required=True,
                   help="trusted public key file or directory (repeatable)")

    def run(args: argparse.Namespace) -> int:
        import tempfile

        from edge.models.bundle import load_bundle
        from edge.models.infer import Scorer
        from edge.models.registry import unpack_archive

        with tempfile.TemporaryDirectory(prefix="forewarn-verify-") as tmp:
            path = args.path
            if path.is_file():  # a .tar.gz as shipped to gateways: unpack safely first
                path = Path(tmp) / unpack_archive(path, Path(tmp), 512 << 20)
            b = load_bundle(path, args.key)
            Scorer(b)
            m = b.manifest
        print(f"OK {b.ident}: signed by {b.signed_by}; {len(m.signals)} signals, window "
              f"{m.window} x {m.sample_period_s}s, hop {m.hop}; output {m.output.kind}; "
              f"self-test {len(m.self_test)} cases passed")
        return 0

    v.set_defaults(func=run)


def _lazy(module: str) -> Register:
    def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        import importlib

        importlib.import_module(module).register(sub)

    return register


BUILTIN: list[Register] = [_lazy("edge.cli.agent"), _keys, _bundle, _lazy("edge.cli.models"),
                           _lazy("edge.history.export"), _lazy("edge.egress.ledger"),
                           _lazy("edge.cli.sessions")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forewarn",
        description="Forewarn: predictive-maintenance edge appliance (agent, trainer, tools).",
    )
    parser.add_argument("--version", action="version", version=f"forewarn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in BUILTIN:
        register(sub)
    for ep in sorted(entry_points(group="forewarn.commands"), key=lambda e: e.name):
        try:
            ep.load()(sub)
        except ImportError as exc:
            # The training extra is optional on an appliance: say how to get it.
            msg = f"not available: {exc.name} is not installed (pip install 'forewarn[train]')"
            p = sub.add_parser(ep.name, help=msg, description=msg)
            p.set_defaults(func=lambda _a, m=msg: (print(m, file=sys.stderr), 2)[1])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ForewarnError as exc:
        print(f"forewarn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

