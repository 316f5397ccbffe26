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
from typing import TYPE_CHECKING

from edge import __version__
from edge.core.errors import ForewarnError

if TYPE_CHECKING:
    from edge.models.signing import KeyRing

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _keys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keys", help="manage bundle signing keys",
                       description="Manage Ed25519 keys that sign model bundles.")
    ks = p.add_subparsers(dest="keys_cmd", required=True)
    g = ks.add_parser(
        "generate", help="create a key pair (private key mode 0600)",
        description="Create an Ed25519 key pair. Without --site: a central signing key "
        "(the .pub goes to every appliance's bundle.trusted_keys, the .key stays with the "
        "trainer). With --site: this appliance's site key, under <state_dir>/keys, which "
        "may sign only site parameters of a centrally signed template (its .pub goes to "
        "bundle.site_keys).")
    g.add_argument("--site", action="store_true",
                   help="create the appliance's site key (default file stem: site) under "
                        "<state_dir>/keys")
    g.add_argument("--state-dir", type=Path,
                   help="with --site: the agent state directory (default /var/lib/forewarn, "
                        "or the --config file's)")
    g.add_argument("--config", "-c", type=Path, help="with --site: agent TOML for state_dir")
    g.add_argument("--out", type=Path,
                   help="directory for the pair (default: keys, or <state_dir>/keys with "
                        "--site)")
    g.add_argument("--name", help="file stem (default: signing, or site with --site)")
    g.add_argument("--force", action="store_true", help="overwrite an existing pair")

    def run(args: argparse.Namespace) -> int:
        from edge.models.signing import generate_keypair

        out, name = args.out or Path("keys"), args.name or "signing"
        if args.site:
            out, name = args.out or _state_dir(args) / "keys", args.name or "site"
            out.mkdir(mode=0o700, parents=True, exist_ok=True)
        priv = out / f"{name}.key"
        pub = out / f"{name}.pub"
        kid = generate_keypair(priv, pub, overwrite=args.force)
        print(f"wrote {priv} (private, 0600) and {pub} (public); key id {kid}")
        if args.site:
            print(f"site key: add {pub} to bundle.site_keys in this appliance's agent.toml; it "
                  "may sign only site parameters of a centrally signed template")
        else:
            print("give the .pub file to every appliance (bundle.trusted_keys); keep the .key "
                  "secret")
        return 0

    g.set_defaults(func=run)


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return Path(args.state_dir)
    if args.config is not None:
        from edge.core.config import load_config

        return Path(load_config(args.config).state_dir)
    return Path("/var/lib/forewarn")


def _bundle(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bundle", help="inspect and verify model bundles",
                       description="Inspect and verify model bundles.")
    bs = p.add_subparsers(dest="bundle_cmd", required=True)
    v = bs.add_parser("verify", help="check signature, manifest, graph and self-test",
                      description="Verify a bundle as an appliance would. A site parameters "
                      "bundle is verified with its template (--template, or the registry "
                      "under --state-dir).")
    v.add_argument("path", type=Path, help="bundle directory or .tar.gz")
    v.add_argument("--key", "--trusted-keys", dest="key", type=Path, action="append",
                   required=True,
                   help="trusted (central) public key file or directory (repeatable)")
    v.add_argument("--site-key", type=Path, action="append", default=[],
                   help="site public key file or directory (repeatable)")
    v.add_argument("--template", type=Path,
                   help="for site parameters: the template bundle directory")
    v.add_argument("--state-dir", type=Path,
                   help="for site parameters: find the template in <state_dir>/models")

    def run(args: argparse.Namespace) -> int:
        import tempfile

        from edge.models.archive import unpack_archive
        from edge.models.bundle import load_bundle
        from edge.models.infer import Scorer
        from edge.models.signing import KeyRing
        from edge.models.sitekey import bundle_kind

        with tempfile.TemporaryDirectory(prefix="forewarn-verify-") as tmp:
            path = args.path
            if path.is_file():  # a .tar.gz as shipped to gateways: unpack safely first
                path = Path(tmp) / unpack_archive(path, Path(tmp), 512 << 20)
            keys = KeyRing.load(args.key, args.site_key)
            if bundle_kind(path) == "site_params":
                return _verify_params(path, keys, args)
            b = load_bundle(path, keys)
            Scorer(b)
            m = b.manifest
        print(f"OK {b.ident}: {m.kind}, signed by {b.signed_by}; {len(m.signals)} signals, "
              f"window {m.window} x {m.sample_period_s}s, hop {m.hop}; output {m.output.kind}; "
              f"self-test {len(m.self_test)} cases passed")
        return 0

    v.set_defaults(func=run)


def _verify_params(path: Path, keys: KeyRing, args: argparse.Namespace) -> int:
    from edge.models.sitekey import load_site_params, registry_finder

    if args.template is not None:
        template = Path(args.template)
        sp = load_site_params(path, keys, lambda _ref: template)
    elif args.state_dir is not None:
        sp = load_site_params(path, keys, registry_finder(Path(args.state_dir) / "models"))
    else:
        raise ForewarnError(f"{args.path} holds site parameters: pass --template <template "
                            "bundle> or --state-dir <agent state dir> to find its template")
    t = sp.template
    print(f"OK site parameters {sp.ident} (asset {sp.asset}): signed by key {sp.signed_by}; "
          f"template {t.ident} signed by central key {t.signed_by}; params.npz sha256 "
          f"{sp.params_sha256[:12]}…; self-test {len(sp.manifest.self_test)} cases passed")
    return 0


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

