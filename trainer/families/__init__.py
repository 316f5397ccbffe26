"""The model families ``forewarn train`` knows, behind one registry.

A family is the value of ``[model] family`` in a training config. Each family
module holds its ``[model]`` section (a strict pydantic class) and its
fit-to-ONNX function; the registry adds the pipeline that trains it from a
config file. Every family reads its data through the one tabular source
(:mod:`trainer.tabular`; C-MAPSS and SKAB are presets of it).

Adding a family: a module here with its section and ``fit_onnx``, one
:class:`Family` in :func:`families`, and the section in the config union of the
pipeline it runs in (``trainer.models`` for supervised targets,
``trainer.anomaly_pipeline`` for healthy-only training).
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from edge.core.errors import ConfigError

DEFAULT_FAMILY = "gradient_boosting"


Train = Callable[..., Path]


@dataclass(frozen=True)
class Family:
    name: str
    task: Literal["rul", "probability", "anomaly"]
    summary: str
    section: type[Any]  # the [model] section's pydantic class
    train: Train
    load: Callable[[Path], Any]  # config file -> the validated config tree it runs on


def _train_supervised(config_path: Path, out_dir: Path, key_path: Path,
                      data_root: Path | None = None, version: str | None = None, *,
                      overwrite: bool = False, progress: TextIO | None = sys.stderr,
                      mlflow_uri: str | None = None) -> Path:
    from trainer import pipeline

    return pipeline.train_from_config(config_path, out_dir, key_path, data_root, version,
                                      overwrite=overwrite, progress=progress,
                                      mlflow_uri=mlflow_uri)


def _train_anomaly(config_path: Path, out_dir: Path, key_path: Path,
                   data_root: Path | None = None, version: str | None = None, *,
                   overwrite: bool = False, progress: TextIO | None = sys.stderr,
                   mlflow_uri: str | None = None) -> Path:
    from trainer import anomaly_pipeline

    if mlflow_uri:
        raise ConfigError("--mlflow logs the supervised families only; anomaly families "
                          "write their metrics to the manifest")
    return anomaly_pipeline.train_from_config(config_path, out_dir, key_path, data_root,
                                              version, overwrite=overwrite)


def _load_supervised(path: Path) -> Any:
    from trainer.models import load_config

    return load_config(path)


def _load_anomaly(path: Path) -> Any:
    from trainer.anomaly_pipeline import load_config

    return load_config(path)


def families() -> dict[str, Family]:
    """Every known family by name (built on call: no import-time registry state)."""
    from trainer.families import isoforest, pca, rul

    return {f.name: f for f in (
        Family(rul.REGRESSOR, "rul", rul.SUMMARY[rul.REGRESSOR],
               rul.GradientBoostingSection, _train_supervised, _load_supervised),
        Family(rul.CLASSIFIER, "probability", rul.SUMMARY[rul.CLASSIFIER],
               rul.GradientBoostingSection, _train_supervised, _load_supervised),
        Family(pca.NAME, "anomaly", pca.SUMMARY, pca.PcaSection, _train_anomaly,
               _load_anomaly),
        Family(isoforest.NAME, "anomaly", isoforest.SUMMARY, isoforest.IsoForestSection,
               _train_anomaly, _load_anomaly),
    )}


def load_config(config_path: Path) -> tuple[Family, Any]:
    """The family a config names and the config validated by that family's schema."""
    family = family_of(config_path)
    return family, family.load(Path(config_path))


def family_named(name: object, where: str) -> Family:
    """The family ``name``; an unknown one is an error naming ``where`` and the choices."""
    known = families()
    if not isinstance(name, str) or name not in known:
        raise ConfigError(f"{where}: model.family → {name!r} → expected one of "
                          f"{', '.join(known)}")
    return known[name]


def family_of(config_path: Path) -> Family:
    """The family a training config names (``[model] family``; default gradient_boosting)."""
    path = Path(config_path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read training config ({exc})") from exc
    model = raw.get("model", {})
    name = model.get("family", DEFAULT_FAMILY) if isinstance(model, dict) else model
    return family_named(name, str(path))
