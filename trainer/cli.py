"""``forewarn train``: the command line of every family (:mod:`trainer.families`).

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

from edge.core.errors import ForewarnError
from trainer.dataflag import add_data_argument

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
Train a model and write a signed bundle <out>/<name>/<version>/ (model.onnx,
manifest.json, SIGNATURE) that `forewarn model install` accepts.

The config is TOML, one schema for every family; unknown keys are rejected and
every error names the key. [model] family picks the family: gradient_boosting
(remaining useful life, the default), gradient_boosting_classifier (probability
of failure within target.horizon), pca (anomaly score, Hotelling T² + Q) or
isoforest (anomaly score, IsolationForest). [target], [thresholds], [regimes]
and [labels] are the RUL families' sections, [calibration] the anomaly
families', [commissioning] pca's; one given to another family is refused.
Features come from the same ONNX feature graph the bundle runs; same data +
same config => identical model.onnx. A data quality report is printed before
fitting; a constant or mostly-missing signal is refused unless quality.allow
lists it.

Data: [data] dataset says where the rows come from.

  C-MAPSS preset (NASA turbofan run-to-failure, shipped with the trainer):
      [data]
      dataset = "cmapss"
      subset = "FD001"                # FD001, FD002 shipped; FD003/FD004: --data
    e.g. trainer/configs/cmapss_fd001.toml, cmapss_fd002.toml. Read by the
    table source as [data.table] delimiter = "whitespace", columns = [unit,
    cycle, op1..op3, s1..s21], asset_column = "unit", no timestamp,
    label_kind = "run_to_failure" (each engine's last row is its failure);
    the test file and its RUL file give the official test metrics.

  SKAB preset (water-circulation bench; trains on its anomaly-free run):
      [data]
      dataset = "skab"                # --data: a copy of the SKAB data
      signals = ["Current", "Voltage", "Thermocouple"]
    e.g. trainer/configs/skab_pca.toml, skab_isoforest.toml

  Your own CSV or Parquet table (every family):
      [data]
      dataset = "table"
      signals = ["bearing_temp_C", "flow_l_min"]   # columns, in window order
      sample_period_s = 1.0
      [data.table]
      path = "plant.csv"              # from --data, else the config's folder
      delimiter = "auto"              # or ";", "whitespace" ...; decimal = "auto" | "." | ","
      columns = []                    # a file without a header: its column names
      timestamp = "timestamp"         # "" = none: row i is at i * sample_period_s
      timestamp_format = "auto"       # epoch_s, epoch_ms, iso8601, row_index, or
                                      # a strftime pattern "%d.%m.%Y %H:%M:%S" (UTC)
      asset_column = "asset"          # one series per asset ("" = one asset)
      label_column = "fault"          # optional, with label_kind:
      label_kind = "anomaly"          # anomaly (0/1: 1 never trains), rul
                                      # (remaining life in samples), run_to_failure
                                      # (1 on the failure row; life derived;
                                      # without label_column: each asset's last row)
      train = ["2026-01-01", "2026-03-01"]        # optional [start, end) ranges;
      validation = ["2026-03-01", "2026-03-15"]   # ISO-8601 or epoch s
      test = ["2026-03-15", "2026-04-01"]
    e.g. trainer/examples/plant_pca.toml. Unsorted rows are sorted and exact
    duplicate rows dropped (both counted and printed); a missing timestamp, a
    non-numeric cell, a label outside its kind or two different rows at one
    time is an error naming the file, line/row and column.

  The agent's exported history (`forewarn export --since ... --out h.parquet`,
  long form ts/asset/signal/value): a table like any other:
      [data]
      dataset = "table"
      [data.table]
      path = "h.parquet"              # layout "long" is detected
    The RUL families can also read the agent's history directory in place:
      dataset = "history"
      path = "/var/lib/forewarn/history"
    with [labels.failures] giving each asset's failure time (epoch s).

Any of these tables streams to a broker as live readings with
`forewarn replay --config CONFIG` (see forewarn replay --help).
Step by step, from a CSV to an installed bundle: docs/train-your-own-data.md.
"""


def _run_train(args: argparse.Namespace) -> int:
    try:
        bundle = train_from_config(
            args.config, args.out, args.key, data_root=args.data,
            version=args.version, overwrite=args.force,
            mlflow_uri=getattr(args, "mlflow", None),
        )
    except (ForewarnError, ValueError, FileNotFoundError) as exc:
        print(f"forewarn train: {exc}", file=sys.stderr)
        return 2
    manifest = json.loads((bundle / "manifest.json").read_text())
    print(bundle)
    for k in ("train_rmse", "validation_rmse", "test_rmse", "test_rmse_capped",
              "test_nasa_score", "validation_f1", "test_f1", "validation_precision",
              "test_precision", "test_window_precision"):
        if k in manifest["metrics"]:
            print(f"  {k:17s} {manifest['metrics'][k]:.3f}")
    print(f"  fingerprint       {manifest['fingerprint']}")
    print(f"  model_sha256      {manifest['model_sha256']}")
    return 0


def register_train(subparsers: Any) -> None:
    """Add ``train`` to the ``forewarn`` CLI (entry point ``forewarn.commands``)."""
    p = subparsers.add_parser(
        "train", help="train a model (C-MAPSS, SKAB or your own table) and sign a bundle",
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
    add_data_argument(p, "data folder: the C-MAPSS train_/test_/RUL_<subset>.txt[.gz] files "
                         "(default: the copies shipped with the trainer, FD001 and FD002), "
                         "a copy of SKAB (dataset = \"skab\"), or the folder a table's "
                         "relative path is in (dataset = \"table\")")
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
