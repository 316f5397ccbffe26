"""``forewarn train``: the command line of :mod:`trainer.pipeline`.

Plugged into the one ``forewarn`` CLI through the ``forewarn.commands`` entry
point (see pyproject.toml), so the agent never imports the trainer. Every
``forewarn`` invocation imports this module to register the command, so the
heavy imports (scikit-learn, skl2onnx: ~1.4 s) wait until training starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from edge.errors import ForewarnError

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "cmapss_fd001.toml"


def train_from_config(
    config_path: Path,
    out_dir: Path,
    key_path: Path,
    data_root: Path | None = None,
    version: str | None = None,
    *,
    overwrite: bool = False,
    progress: TextIO | None = sys.stderr,
    mlflow_uri: str | None = None,
) -> Path:
    """Train, export, sign; return the bundle directory ``<out_dir>/<name>/<version>``.

    The config's ``[model] family`` picks the pipeline (:mod:`trainer.families`).
    """
    from trainer.families import family_of

    return family_of(config_path).train(
        config_path, out_dir, key_path, data_root, version,
        overwrite=overwrite, progress=progress, mlflow_uri=mlflow_uri,
    )


_HELP = """\
Train a remaining-useful-life model on NASA C-MAPSS and write a signed bundle.

Stages: load the data set (the gzip copies shipped in trainer/data/cmapss, or
--data-root), cut every training engine into windows of `window.length` cycles
(hop `window.hop`), split whole engines into training/validation, compute the
features with the same ONNX feature graph the bundle runs (per signal: mean,
std, min, max, least-squares slope, mean of the last `features.last_n`
samples), fit a gradient-boosting regressor on the capped RUL target
(`target.rul_cap`), convert it with skl2onnx and merge it behind the feature
graph, so model.onnx takes the raw window [batch, signals, window] and returns
`score` (RUL in cycles) and `deviations` (features in reference std units).

The bundle <out>/<name>/<version>/ holds model.onnx, manifest.json (signals
and ranges, window, thresholds, reference histograms for drift, metrics incl.
the official test RMSE on the last window of each test engine, fingerprint,
lineage, library versions, self-test windows) and SIGNATURE (Ed25519 over the
manifest and graph hashes). Same data + same config => identical model.onnx.

The config is TOML with sections [bundle] [data] [window] [features] [target]
[model] [model.params] [thresholds] [reference] [regimes] [quality] [labels];
unknown keys are rejected. data.dataset = "table" (CSV/Parquet, long or wide
form) or "history" (the agent's Parquet store) trains on your own run-to-failure
data, with [labels.failures] giving each asset's failure time. A data quality
report is printed before fitting; a constant or mostly-missing signal is refused
unless quality.allow lists it. See trainer/configs/cmapss_fd001.toml and
cmapss_fd002.toml (per-regime standardisation inside the graph).
"""


def _run_train(args: argparse.Namespace) -> int:
    try:
        bundle = train_from_config(
            args.config, args.out, args.key, data_root=args.data_root,
            version=args.version, overwrite=args.force,
            mlflow_uri=getattr(args, "mlflow", None),
        )
    except (ForewarnError, ValueError, FileNotFoundError) as exc:
        print(f"forewarn train: {exc}", file=sys.stderr)
        return 2
    manifest = json.loads((bundle / "manifest.json").read_text())
    print(bundle)
    for k in ("train_rmse", "validation_rmse", "test_rmse", "test_rmse_capped",
              "test_nasa_score", "validation_f1", "test_f1"):
        if k in manifest["metrics"]:
            print(f"  {k:17s} {manifest['metrics'][k]:.3f}")
    print(f"  fingerprint       {manifest['fingerprint']}")
    print(f"  model_sha256      {manifest['model_sha256']}")
    return 0


def register_train(subparsers: Any) -> None:
    """Add ``train`` to the ``forewarn`` CLI (entry point ``forewarn.commands``)."""
    p = subparsers.add_parser(
        "train", help="train a model on C-MAPSS and write a signed bundle",
        description=_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="training config TOML (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("models"),
                   help="bundle registry root; writes <out>/<name>/<version>/ "
                        "(default: %(default)s)")
    p.add_argument("--key", type=Path, required=True,
                   help="Ed25519 private key (PEM, mode 0600) that signs the bundle; "
                        "make one with `forewarn keys generate`")
    p.add_argument("--data-root", type=Path, default=None,
                   help="directory with the C-MAPSS train_/test_/RUL_<subset>.txt[.gz] "
                        "files (default: the copies shipped with the trainer)")
    p.add_argument("--version", default=None,
                   help="bundle version (default: first 12 hex digits of the training "
                        "fingerprint, i.e. of data hashes + config)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing bundle of the same name and version")
    p.add_argument("--mlflow", metavar="URI", default=None,
                   help="also log params, metrics, report and bundle to this MLflow tracking "
                        "URI and register the bundle version (extra forewarn[mlflow]; "
                        "e.g. file:///srv/mlruns or http://mlflow:5000)")
    p.set_defaults(func=_run_train)
