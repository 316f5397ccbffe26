"""The model families ``forewarn train`` knows, behind one registry.

A family is the value of ``[model] family`` in a training config. Each family
module holds its ``[model]`` section (a strict pydantic class) and its
fit-to-ONNX function and names the optional config sections it takes; the
registry adds the pipeline that trains it from a config file. Every family is
configured by the one schema :class:`trainer.config.TrainingConfig` and reads its
data through the one tabular source (:mod:`trainer.tabular`; C-MAPSS and SKAB are
presets of it).

Adding a family: a module here with its section, ``SECTIONS`` and ``fit_onnx``,
one :class:`Family` in :func:`families`, and its section in the ``[model]`` union
``trainer.config.ModelSection`` (a test holds the union and the registry equal).
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from edge.core.errors import ConfigError

if TYPE_CHECKING:
    from trainer.config import TrainingConfig

DEFAULT_FAMILY = "gradient_boosting"

# The supervised pipeline fits targets (remaining life, failure within a horizon);
# the anomaly pipeline fits healthy rows only.
Pipeline = Literal["supervised", "anomaly"]


Train = Callable[..., Path]


@dataclass(frozen=True)
class Family:
    name: str
    task: Literal["rul", "probability", "anomaly"]
    summary: str
    section: type[Any]  # the [model] section's pydantic class
    train: Train
    sections: frozenset[str]  # the optional config sections it takes ([target], ...)

    @property
    def pipeline(self) -> Pipeline:
        return "anomaly" if self.task == "anomaly" else "supervised"


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


def families() -> dict[str, Family]:
    """Every known family by name (built on call: no import-time registry state)."""
    from trainer.families import isoforest, pca, rul

    return {f.name: f for f in (
        Family(rul.REGRESSOR, "rul", rul.SUMMARY[rul.REGRESSOR],
               rul.GradientBoostingSection, _train_supervised, rul.SECTIONS),
        Family(rul.CLASSIFIER, "probability", rul.SUMMARY[rul.CLASSIFIER],
               rul.GradientBoostingSection, _train_supervised, rul.SECTIONS),
        Family(pca.NAME, "anomaly", pca.SUMMARY, pca.PcaSection, _train_anomaly,
               pca.SECTIONS),
        Family(isoforest.NAME, "anomaly", isoforest.SUMMARY, isoforest.IsoForestSection,
               _train_anomaly, isoforest.SECTIONS),
    )}


def load_config(config_path: Path) -> tuple[Family, TrainingConfig]:
    """The family a config names and the config (:class:`trainer.config.TrainingConfig`)."""
    from trainer.config import load_config as load

    cfg = load(Path(config_path))
    return cfg.family, cfg


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
