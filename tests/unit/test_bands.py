"""Signal units and normal bands from the manifest, and the readings an alert carries."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.alerts import AlertManager, AlertStore, RuleSpec
from edge.alerts.bands import SignalBand, add_readings, signal_bands
from edge.models.bundle import Manifest, load_bundle
from edge.models.infer import ScoredWindow
from tests.bundlefactory import make_bundle

MARGIN = {"dataset": "cmapss", "config": {"data": {"range_margin": 0.5}}}


def manifest(tmp_path: Path, lineage: dict[str, object] | None) -> Manifest:
    path, pub = make_bundle(tmp_path, signals=["s14", "s11", "s9"],
                            units={"s14": "rpm", "s11": "psia"},
                            ranges={"s14": (8112.5, 8142.5), "s11": (46.5, 48.5),
                                    "s9": (None, 9100.0)}, lineage=lineage)
    return load_bundle(path, [pub]).manifest


def test_the_trainers_margin_is_undone_when_the_lineage_records_it(tmp_path: Path) -> None:
    bands = signal_bands(manifest(tmp_path, MARGIN))
    assert bands["s14"] == SignalBand("rpm", 8120.0, 8135.0, "training range")
    assert bands["s11"] == SignalBand("psia", 47.0, 48.0, "training range")
    assert bands["s9"] == SignalBand("", None, 9100.0, "accepted range")


def test_without_a_recorded_margin_min_and_max_are_shown_as_accepted(tmp_path: Path) -> None:
    for lineage in (None, {"config": {"data": {"range_margin": "wide"}}}):
        bands = signal_bands(manifest(tmp_path / str(lineage is None), lineage))
        assert bands["s14"] == SignalBand("rpm", 8112.5, 8142.5, "accepted range")


def test_readings_come_from_the_windows_last_sample() -> None:
    top = [{"feature": "s14:std", "signal": "s14", "deviation": 8.2},
           {"feature": "s11:mean", "signal": "s11", "deviation": 1.0},
           {"feature": "ratio", "signal": None, "deviation": 0.5}]
    window = np.array([[8125.0, 8142.0], [47.5, np.nan]], dtype=np.float32)
    bands = {"s14": SignalBand("rpm", 8120.0, 8135.0, "training range")}
    out = add_readings(top, window, ["s14", "s11"], bands)
    assert out[0] == {"feature": "s14:std", "signal": "s14", "deviation": 8.2,
                      "reading": 8142.0, "unit": "rpm", "normal_low": 8120.0,
                      "normal_high": 8135.0, "band": "training range"}
    assert (out[1]["reading"], out[1]["unit"], out[1]["band"]) == (None, "", "none")
    assert "reading" not in out[2]
    assert add_readings([dict(top[0])], None, ["s14"], bands)[0]["reading"] is None


def test_an_alerts_explanation_carries_the_reading_and_band(tmp_path: Path) -> None:
    m = manifest(tmp_path, MARGIN)
    published: list[tuple[str, bytes, bool]] = []
    mgr = AlertManager(AlertStore(tmp_path / "alerts.db"), RuleSpec(warning=0.5),
                       lambda t, b, r: published.append((t, b, r)), "plant",
                       feature_names=m.output.feature_names, signal_names=m.signal_names,
                       signal_bands=signal_bands(m))
    raw = np.array([[8125.0, 8142.0], [47.5, 47.6], [9000.0, 9001.0]], dtype=np.float32)
    mgr.on_scores([ScoredWindow("e7", 1.0, 0.9, np.array([8.2, 0.1, 0.3]), "m/1", raw)])
    (alert,) = mgr.open_alerts()
    first = alert.top_features[0]
    assert (first["signal"], first["reading"], first["unit"], first["normal_low"],
            first["normal_high"]) == ("s14", 8142.0, "rpm", 8120.0, 8135.0)
    stored = mgr.store.require(alert.id).top_features[0]
    assert stored["reading"] == 8142.0  # durable, and in the MQTT state
    assert any(b'"reading":8142.0' in body for _, body, _ in published)
