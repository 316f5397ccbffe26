"""Log a training run and its bundle to MLflow (optional extra ``forewarn[mlflow]``).

One MLflow run per bundle: the config's flattened keys as parameters, the
manifest's metrics, the data-quality report and fingerprint as tags/artifacts,
the whole bundle directory as artifacts, and a registered model version named
after the bundle whose source is the logged bundle. A file-based tracking URI
(``file:///path/mlruns``) needs no server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge.core.errors import ConfigError


def require_mlflow() -> Any:
    try:
        import mlflow
    except ImportError as exc:
        raise ConfigError(
            "--mlflow needs the optional extra: pip install 'forewarn[mlflow]'") from exc
    return mlflow


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{key}."))
        else:
            # MLflow caps a parameter value at 6000 characters.
            out[key] = json.dumps(v)[:6000] if not isinstance(v, str) else v[:6000]
    return out


def log_run(tracking_uri: str, bundle: Path, config_path: Path,
            experiment: str = "forewarn") -> str:
    """Log ``bundle`` (a written bundle directory) and register it; returns
    ``"<model name> v<version> (run <id>)"``."""
    mlflow = require_mlflow()
    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    lineage = manifest.get("lineage", {})
    with mlflow.start_run(run_name=f"{manifest['name']}-{manifest['version']}") as run:
        mlflow.log_params(_flatten(lineage.get("config", {})))
        mlflow.log_metrics({k: float(v) for k, v in manifest.get("metrics", {}).items()})
        mlflow.set_tags({
            "forewarn.bundle": f"{manifest['name']}/{manifest['version']}",
            "forewarn.fingerprint": manifest.get("fingerprint", ""),
            "forewarn.model_sha256": manifest["model_sha256"],
            "forewarn.output_kind": manifest["output"]["kind"],
        })
        mlflow.log_dict(lineage.get("data_quality") or {}, "report/data_quality.json")
        mlflow.log_dict({k: manifest[k] for k in ("metrics", "thresholds", "fingerprint")},
                        "report/summary.json")
        mlflow.log_artifact(str(config_path), artifact_path="config")
        mlflow.log_artifacts(str(bundle), artifact_path="bundle")
        source = f"runs:/{run.info.run_id}/bundle"
    client = mlflow.MlflowClient()
    name = manifest["name"]
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description=manifest.get("description", ""))
    mv = client.create_model_version(
        name, source, run_id=run.info.run_id,
        tags={"forewarn.version": manifest["version"],
              "forewarn.model_sha256": manifest["model_sha256"]},
        description=f"forewarn bundle {manifest['name']}/{manifest['version']}")
    return f"{name} v{mv.version} (run {run.info.run_id})"
