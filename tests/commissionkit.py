"""A template bundle and pumps with their own normal, for the commissioning tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.models.signing import generate_keypair

REPO = Path(__file__).resolve().parents[1]
ROWS = 120  # the template's commissioning rows


def train_template(work: Path) -> tuple[Path, Path]:
    """The plant example as a template (trained on its two pumps), and its central key."""
    from trainer.cli import train_from_config

    text = (REPO / "trainer/examples/plant_pca.toml").read_text()
    text = text.replace('name = "plant-pca"', 'name = "plant-template"').replace(
        'path = "plant.csv"', f'path = "{REPO / "trainer/examples/plant.csv"}"')
    text += f"\n[commissioning]\nrows = {ROWS}\nholdout_share = 0.25\ntail_alarm_budget = 0.5\n"
    (work / "t.toml").write_text(text)
    key, pub = work / "central.key", work / "central.pub"
    generate_keypair(key, pub)
    return train_from_config(work / "t.toml", work / "models", key, progress=None), pub


def pump(seed: int, n: int, *, stuck_flow: bool = False, fault_from: int | None = None
         ) -> np.ndarray:
    """A pump with its own normal: vibration follows flow less steeply than the
    example plant's, from a higher base (each within the template's ranges)."""
    rng = np.random.default_rng(seed)
    # A duty cycle the commissioning rows cover several times: its normal, all of it.
    load = 0.5 * np.sin(2 * np.pi * np.arange(n) / 40) + rng.normal(0, 0.02, n)
    flow = 115 + 8 * load + rng.normal(0, 0.4, n)
    temp = 46 + 2 * load + rng.normal(0, 0.1, n)
    vib = 2.2 + 0.02 * (flow - 115) + rng.normal(0, 0.03, n)
    if stuck_flow:
        flow[:] = 100.0
    if fault_from is not None:  # the bearing goes: vibration leaves the flow behind
        vib[fault_from:] += np.linspace(0.3, 1.5, n - fault_from)
    return np.stack([temp, flow, vib])
