"""Table and history loaders: long and wide form, CSV and Parquet, the agent's own store,
and the grid the trainer windows (hold rule as on the edge)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edge.core.errors import ConfigError
from edge.history.parquet import ParquetStore
from trainer.loaders import read_agent_history, read_table, select, to_runs

LONG_CSV = """ts,asset,signal,value
0,pump-1,temp,20.5
1,pump-1,temp,20.7
1,pump-1,temp,99.0
3,pump-1,temp,21.0
0,pump-1,flow,5.0
2,pump-2,temp,30.0
"""


def _by(r, asset: str, signal: str) -> list[tuple[float, float]]:  # type: ignore[no-untyped-def]
    sel = (r.asset == asset) & (r.signal == signal)
    return sorted(zip(r.ts[sel].tolist(), r.value[sel].tolist(), strict=True))


def test_long_csv(tmp_path: Path) -> None:
    (tmp_path / "long.csv").write_text(LONG_CSV)
    r = read_table(tmp_path / "long.csv")
    assert len(r) == 6 and r.assets == ["pump-1", "pump-2"] and r.signals == ["flow", "temp"]
    assert _by(r, "pump-1", "temp") == [(0, 20.5), (1, 20.7), (1, 99.0), (3, 21.0)]
    assert r.files[0]["name"] == "long.csv" and len(r.files[0]["sha256"]) == 64


def test_wide_csv_with_iso_timestamps_and_blanks(tmp_path: Path) -> None:
    (tmp_path / "wide.csv").write_text(
        "ts,asset,temp,flow\n"
        "2024-03-01T00:00:00Z,p1,20.0,5\n"
        "2024-03-01T00:00:10Z,p1,,6\n"
        "2024-03-01T00:00:20Z,p2,22.0,7\n")
    r = read_table(tmp_path / "wide.csv")
    t0 = 1709251200.0  # 2024-03-01T00:00:00Z
    assert _by(r, "p1", "flow") == [(t0, 5.0), (t0 + 10, 6.0)]
    temp = _by(r, "p1", "temp")
    assert temp[0] == (t0, 20.0) and np.isnan(temp[1][1])  # a blank cell is missing


def test_parquet_long_and_wide(tmp_path: Path) -> None:
    pq.write_table(pa.table({"ts": [0.0, 1.0], "asset": ["a", "a"], "signal": ["x", "x"],
                             "value": [1.0, 2.0]}), tmp_path / "long.parquet")
    pq.write_table(pa.table({"ts": pa.array([0, 1_000_000], pa.timestamp("us", tz="UTC")),
                             "x": [1.0, 2.0], "y": [3, 4]}), tmp_path / "machine7.parquet")
    assert _by(read_table(tmp_path / "long.parquet"), "a", "x") == [(0, 1.0), (1, 2.0)]
    w = read_table(tmp_path / "machine7.parquet")
    # No asset column: the file is one asset named after it.
    assert w.assets == ["machine7"] and _by(w, "machine7", "y") == [(0, 3.0), (1, 4.0)]


def test_agent_history_is_read_directly(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path / "history")
    base = 1_700_000_000.0
    store.append("press-1", "force", base + np.arange(5.0), np.arange(5.0) * 2)
    store.append("press-1", ["force", "temp"], [base + 1, base + 1], [2.0, 40.0])  # redelivery
    store.close()  # flush() alone leaves the rows in the write-ahead log, not in date=...
    r = read_agent_history(tmp_path / "history")
    assert _by(r, "press-1", "force") == [(base + i, 2.0 * i) for i in range(5)]  # deduplicated
    assert _by(r, "press-1", "temp") == [(base + 1, 40.0)]
    assert r.files and all(f["name"].startswith("date=") for f in r.files)
    with pytest.raises(ConfigError, match="nowhere"):
        read_agent_history(tmp_path / "nowhere")


def test_grid_holds_like_the_edge(tmp_path: Path) -> None:
    (tmp_path / "long.csv").write_text(LONG_CSV)
    r = read_table(tmp_path / "long.csv")
    runs = {u.unit: u for u in to_runs(r, ["temp", "flow"], 1.0, max_hold=1)}
    p1 = runs["pump-1"]
    assert p1.ts.tolist() == [0, 1, 2, 3]
    # Duplicate ts: the first row wins; slot 2 holds slot 1's value (one slot allowed).
    assert p1.signals(["temp"])[0].tolist() == [20.5, 20.7, 20.7, 21.0]
    flow = p1.signals(["flow"])[0]
    assert flow[:2].tolist() == [5.0, 5.0] and np.isnan(flow[2:]).all()  # held 1, then gone
    # A failure time ends the run there.
    cut = to_runs(r, ["temp"], 1.0, 1, until={"pump-1": 1.0})
    assert cut[0].ts.tolist() == [0, 1]
    assert select(r, ["flow"]).signals == ["flow"]


@pytest.mark.parametrize(("text", "match"), [
    ("time,asset,x\n0,a,1\n", "no 'ts' column"),
    ("ts,asset\n0,a\n", "one column per signal"),
    ("ts,asset,x\n0,a,hot\n", "column x: not numeric"),
])
def test_errors_name_the_file_and_column(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        read_table(tmp_path / "bad.csv")
    assert "bad.csv" in str(info.value)
