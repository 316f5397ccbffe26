"""The data quality gate: counts per asset and signal, refusals that name the signal,
and the config override."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.core.errors import ForewarnError
from trainer.config import TrainingConfig, load_config
from trainer.loaders import Readings
from trainer.quality import DataQualityError, assess

FD001 = Path(__file__).resolve().parents[2] / "trainer" / "configs" / "cmapss_fd001.toml"


def _readings(rows: list[tuple[str, str, float, float]]) -> Readings:
    a, s, t, v = zip(*rows, strict=True)
    return Readings(np.array(a, dtype=object), np.array(s, dtype=object),
                    np.array(t, dtype=np.float64), np.array(v, dtype=np.float64))


def _healthy(asset: str, signal: str, n: int = 50, seed: int = 0) -> list[tuple]:
    vals = np.random.default_rng(seed).normal(10, 1, n)
    return [(asset, signal, float(i), float(x)) for i, x in enumerate(vals)]


def test_counts_gaps_duplicates_flat_and_range() -> None:
    rows = _healthy("m1", "temp")
    rows = [r for r in rows if not 10 <= r[2] < 20]        # a 10 s gap (ts 9 -> 20)
    rows += [("m1", "temp", 5.0, 10.0)]                     # duplicate timestamp
    rows += [("m1", "temp", float(t), 7.0) for t in range(50, 75)]  # stuck at 7 for 25 samples
    rows += [("m1", "temp", 75.0, float("nan")), ("m1", "temp", 76.0, 500.0)]
    r = _readings(rows + _healthy("m1", "flow", 77))
    report = assess(r, ["temp", "flow"], 1.0, flat_samples=20, ranges={"temp": (0.0, 100.0)})
    q = {(x.asset, x.signal): x for x in report.rows}[("m1", "temp")]
    assert (q.duplicates, q.non_finite, q.out_of_range) == (1, 1, 1)
    # The 11 s gap, and the NaN at 75 (a missing slot between 74 and 76).
    assert q.gaps == 2 and q.longest_gap_s == 11.0
    assert q.longest_flat == 25
    # 77 slots (0..76): 10 never seen, 1 only NaN.
    assert q.missing_share == pytest.approx(11 / 77, abs=1e-6)
    totals = report.totals()
    assert totals["temp"]["flat_assets"] == 1 and totals["flow"]["flat_assets"] == 0
    assert not report.refused and "temp" in report.text()


def test_constant_signal_is_refused_by_name_unless_allowed() -> None:
    r = _readings(_healthy("m1", "temp") + [("m1", "s1", float(i), 518.67) for i in range(50)]
                  + _healthy("m2", "temp", seed=1)
                  + [("m2", "s1", float(i), 518.67) for i in range(50)])
    with pytest.raises(DataQualityError, match=r"signal 's1': constant \(518\.67\)") as info:
        assess(r, ["temp", "s1"], 1.0)
    assert "quality.allow" in str(info.value) and "temp" not in str(info.value).split("\n")[0]
    report = assess(r, ["temp", "s1"], 1.0, allow=["s1"])
    assert report.allowed == {"s1": "constant (518.67) in every asset"}
    assert report.lineage()["allowed_by_config"] == report.allowed


def test_mostly_missing_signal_is_refused() -> None:
    sparse = [("m1", "vib", float(t), 1.0 + t) for t in range(0, 50, 5)]  # 10 of 50 slots
    r = _readings(_healthy("m1", "temp") + sparse)
    with pytest.raises(DataQualityError, match=r"signal 'vib': missing from 80% of its slots"):
        assess(r, ["temp", "vib"], 1.0, max_missing=0.5)
    assert assess(r, ["temp", "vib"], 1.0, max_missing=0.9).refused == {}
    with pytest.raises(DataQualityError, match=r"signal 'pressure': no finite readings"):
        assess(r, ["temp", "pressure"], 1.0)



def _config_with(tmp_path: Path, ranges: str) -> TrainingConfig:
    p = tmp_path / "c.toml"
    p.write_text(FD001.read_text() + "\n[quality.ranges]\n" + ranges)
    return load_config(p)


def test_config_ranges_reach_the_quality_gate(tmp_path: Path) -> None:
    cfg = _config_with(tmp_path, "s2 = [600.0, 700.0]\n")
    assert cfg.quality.ranges == {"s2": (600.0, 700.0)}


@pytest.mark.parametrize(("ranges", "needle"), [
    ("s2 = [700.0, 600.0]\n", "quality.ranges.s2 = [700, 600]: min must be below max"),
    ("nope = [0.0, 1.0]\n", "quality.ranges → ['nope'] → not in data.signals"),
])
def test_bad_ranges_are_refused_naming_the_field(tmp_path: Path, ranges: str,
                                                  needle: str) -> None:
    with pytest.raises(ForewarnError) as err:
        _config_with(tmp_path, ranges)
    assert needle in str(err.value) and "c.toml" in str(err.value)
