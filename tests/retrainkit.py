"""Helpers of the retrain tests: the SKAB active bundle, the site's keys, the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge.models.signing import generate_keypair, load_private_key, sign_bundle
from tests.conftest import SHARED_DATASETS, free_port

REPO = Path(__file__).resolve().parents[1]
SKAB_PCA = REPO / "trainer" / "configs" / "skab_pca.toml"


def skab_root() -> Path:
    root = SHARED_DATASETS / "skab"
    if not (root / "data" / "valve1" / "0.csv").is_file():
        pytest.skip(f"{root}: SKAB is absent (GPL: never copied into the repo; the shared "
                    "data sets hold it)")
    return root


def train_active(root: Path, skab: Path) -> tuple[Path, Path]:
    """The SKAB PCA bundle as `forewarn train` makes it (SKAB's anomaly-free run), signed
    by a "central" key; returns (bundle dir, central public key)."""
    from trainer.cli import train_from_config

    generate_keypair(root / "central.key", root / "central.pub")
    path = train_from_config(SKAB_PCA, root / "models", root / "central.key", skab,
                             progress=open(os.devnull, "w"))  # noqa: SIM115
    return path, root / "central.pub"


def site_keys(keys: Path, central_pub: Path) -> tuple[Path, Path]:
    """The site's retrain key pair and a trusted-keys directory holding the central and
    the retrain public keys; returns (trusted dir, retrain private key)."""
    generate_keypair(keys / "retrain.key", keys / "retrain.pub")
    (keys / "trusted").mkdir()
    for p in (central_pub, keys / "retrain.pub"):
        (keys / "trusted" / p.name).write_bytes(p.read_bytes())
    return keys / "trusted", keys / "retrain.key"


def retrain(*args: str) -> subprocess.CompletedProcess[str]:
    """``forewarn retrain`` (its module: the entry point may not be installed yet)."""
    return subprocess.run([sys.executable, "-m", "trainer.retrain_cli", *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def figures(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The --json figures printed after any trigger lines."""
    doc: dict[str, Any] = json.loads(r.stdout[r.stdout.index("\n{") + 1:]
                                     if not r.stdout.startswith("{") else r.stdout)
    return doc


def variant(src: Path, out: Path, key: Path, version: str, warning: float) -> Path:
    """A copy of bundle ``src`` with another warning level, signed with ``key``."""
    dest = out / src.parent.name / version
    dest.mkdir(parents=True)
    (dest / "model.onnx").write_bytes((src / "model.onnx").read_bytes())
    doc = json.loads((src / "manifest.json").read_text())
    doc["version"] = version
    doc["thresholds"]["warning"] = warning
    doc["thresholds"]["rationale"] = f"deliberately set to {warning:g} by a test"
    (dest / "manifest.json").write_text(json.dumps(doc, indent=1))
    sign_bundle(dest, load_private_key(key))
    return dest


def audit_actions(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def drift_agent_toml(state: Path, bundle: Path, trusted: Path, key: Path, port: int, *,
                     client_id: str, bundle_extra: str = "") -> str:
    """The agent config of the drift -> retrain tests: drift intervals of 360 windows, a
    five-minute gate period, a drift alarm that asks for a retrain after 6 minutes of
    data; ``bundle_extra`` lines go at the end of ``[bundle]``."""
    return f"""
site = "site1"
state_dir = "{state}"
[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "{client_id}"
[bundle]
path = "{bundle}"
name = "skab-pca"
trusted_keys = ["{trusted}"]
registry_poll_s = 0.2
{bundle_extra}
[api]
enabled = false
port = {free_port()}
[storage]
flush_interval_s = 0.2
[drift]
interval_windows = 360
[retrain]
key = "{key}"
gate_hours = {300 / 3600}
train_days = 1.0
drift_alarm_hours = 0.1
"""
