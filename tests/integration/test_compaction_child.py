"""The write-ahead segment format and the agent's compaction child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from bench.figures import descendants
from edge.core.errors import StorageError
from edge.history import wal as wal_mod
from edge.history.arrow import SCHEMA, dictionary, floats
from edge.history.history import read_history
from edge.history.parquet import ParquetStore
from edge.history.wal import Columns
from tests.agentkit import wait_until
from tests.conftest import REPO

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def _cols(n: int = 5) -> Columns:
    return Columns(["pump-1", "débit ü"], ["temp", "vib"], np.arange(n, dtype=np.int32) % 2,
                   np.zeros(n, np.int32), T0 + np.arange(n, dtype=np.float64),
                   np.linspace(-1.5, 2.5, n))


def _segment(tmp_path: Path, cols: Columns) -> Path:
    wal = wal_mod.Wal(tmp_path)
    return wal.append(cols)


def test_segment_round_trips_names_codes_and_floats(tmp_path: Path) -> None:
    cols = _cols()
    p = _segment(tmp_path, cols)
    assert p.suffix == ".fwal" and p.stat().st_size == len(b"".join(cols.encode()))
    back = wal_mod.read_columns(p)
    assert back.assets == cols.assets and back.signals == cols.signals
    for name in ("asset", "signal", "ts", "value"):
        np.testing.assert_array_equal(getattr(back, name), getattr(cols, name))
    t = wal_mod.read_segment(p, SCHEMA)
    assert t["asset"].to_pylist() == ["pump-1", "débit ü"] * 2 + ["pump-1"]
    assert t["value"].to_pylist() == cols.value.tolist()


@pytest.mark.parametrize(("damage", "message"), [
    (lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:], "checksum mismatch"),
    (lambda b: b"XXXXXXXX" + b[8:], "not a WAL segment"),
    (lambda b: b[:-9], "checksum mismatch"),
    (lambda b: b[:10], "not a WAL segment"),
])
def test_a_damaged_segment_is_refused_naming_the_file(tmp_path: Path, damage: object,
                                                      message: str) -> None:
    p = _segment(tmp_path, _cols())
    p.write_bytes(damage(p.read_bytes()))  # type: ignore[operator]
    with pytest.raises(StorageError, match=rf"{p.name}.*{message}"):
        wal_mod.read_columns(p)


def test_codes_outside_the_names_are_refused(tmp_path: Path) -> None:
    cols = _cols()
    cols.signal[2] = 7  # only 2 signal names: a writer bug must not become a wrong name
    p = _segment(tmp_path, cols)
    with pytest.raises(StorageError, match=r"signal code 7 outside its 2 names"):
        wal_mod.read_columns(p)


def test_a_legacy_arrow_segment_is_read_and_compacted(tmp_path: Path) -> None:
    """Segments written by the versions before .fwal (Arrow IPC, lz4) survive an upgrade."""
    cols = _cols(4)
    legacy = pa.Table.from_arrays([dictionary(cols.asset, cols.assets),
                                   dictionary(cols.signal, cols.signals), floats(cols.ts),
                                   floats(cols.value)], names=SCHEMA.names)
    d = tmp_path / "_wal"
    d.mkdir()
    with open(d / "seg-00000000000000000001-old.arrow", "wb") as fh, pa.ipc.new_file(
            fh, legacy.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as w:
        w.write_table(legacy)
    st = ParquetStore(tmp_path, background=True, child=True)
    st.append("pump-1", "temp", [T0 + 10], [9.0])
    st.flush()  # a new-format segment beside the legacy one
    assert [p.suffix for p in wal_mod.segments(tmp_path)] == [".arrow", ".fwal"]
    assert read_history(tmp_path, T0, T0 + 20).num_rows == 5
    st.close(compact=True)
    assert wal_mod.segments(tmp_path) == [] and st.compactions == 1
    t = read_history(tmp_path, T0, T0 + 20, dedupe=False)
    assert sorted(t["value"].to_pylist()) == sorted([*cols.value.tolist(), 9.0])


def test_child_compaction_writes_partitions_and_drops_the_log(tmp_path: Path) -> None:
    st = ParquetStore(tmp_path, background=True, child=True, wal_max_rows=100)
    for a in range(30):
        st.append(f"m{a}", "s", T0 + np.arange(10.0), np.arange(10.0) + a)
    st.flush()
    st.start()
    wait_until(lambda: st.compactions == 1, timeout=60, what="the child's compaction")
    st.close(compact=False)
    assert wal_mod.segments(tmp_path) == []
    assert len(list(tmp_path.rglob("part-*.parquet"))) == 30
    assert st.bytes_written == sum(f.stat().st_size for f in tmp_path.rglob("*.parquet"))
    assert len(st.recent_partitions(60)) == 30, "retention protects what the child wrote"
    t = read_history(tmp_path, T0, T0 + 10, dedupe=False)
    assert t.num_rows == 300 and sorted(t["value"].to_pylist()) == sorted(
        float(v + a) for a in range(30) for v in range(10))


def test_a_failing_child_keeps_the_log_and_says_which_file(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    good = ParquetStore(tmp_path)
    good.append("a", "s", T0 + np.arange(3.0), np.arange(3.0))
    good.flush()
    bad = tmp_path / "_wal" / "seg-99999999999999999999-bad.fwal"
    bad.write_bytes(b"FWWAL1\n\0" + b"\0" * 20)  # left damaged by the previous run
    st = ParquetStore(tmp_path, background=True, child=True)
    st.start()
    wait_until(lambda: st.compaction_errors == 1, timeout=60, what="the failed compaction")
    st.close(compact=False)
    assert st.compactions == 0 and bad in wal_mod.segments(tmp_path)
    assert list(tmp_path.rglob("*.parquet")) == [], "the child undid its files"
    assert "seg-99999999999999999999-bad.fwal" in caplog.text
    assert "checksum mismatch" in caplog.text


AGENT_LIKE = r"""
import sys
from pathlib import Path
import numpy as np
from edge.history.parquet import ParquetStore
st = ParquetStore(Path(sys.argv[1]), background=True, child=True, wal_max_rows=2_000)
st.start()
for t in range(10):
    for a in range(int(sys.argv[2])):
        st.append(f"m{a}", "s", [1_700_000_000.0 + t], [float(t)])
    st.flush()
print("pyarrow" in sys.modules, flush=True)
sys.stdin.readline()  # held here, mid-compaction, until the test kills this process
"""


def test_the_store_never_imports_pyarrow_and_its_child_dies_with_it(tmp_path: Path) -> None:
    root = tmp_path / "history"
    proc = subprocess.Popen([sys.executable, "-c", AGENT_LIKE, str(root), "2000"], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "False", \
            "the agent's store imported pyarrow"
        child = wait_until(lambda: descendants(proc.pid), timeout=30,
                           what="the compaction child")[0]
        wait_until(lambda: list(root.rglob("part-*.parquet")), timeout=30,
                   what="the child writing partitions")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: not Path(f"/proc/{child}").exists() or
                   Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
                   timeout=30, what="the orphaned child to exit")
    finally:
        proc.kill()
        proc.wait(10)
    time.sleep(0.1)
    # Each compaction writes one file per asset (2,000): finished ones stay whole, and
    # the one the kill interrupted was rolled back by its orphaned child.
    files = len(list(root.rglob("part-*.parquet")))
    assert files % 2000 == 0, f"{files} partition files: the orphan neither undid nor finished"
    st = ParquetStore(root)  # the next start compacts what the log still holds
    t = read_history(root, 0, 2e9, dedupe=False)
    assert st.compactions <= 1 and t.num_rows == 20_000, "every row exactly once"
