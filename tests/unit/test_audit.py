"""The hash-chained audit log: appends, verification, tampering, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path

import pytest

from edge.core.audit import GENESIS, AuditLog, entry_hash, head, verify
from edge.core.errors import StorageError


def _fill(path: Path, n: int = 5) -> AuditLog:
    log = AuditLog(path)
    for i in range(n):
        log.record(f"person{i}", "model.promote", name="m", version=str(i))
    return log


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_entries_are_chained_and_verify(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    log = AuditLog(p, clock=lambda: 1234.5)
    e1 = log.record("alice", "model.install", name="m", version="1", path=tmp_path)
    e2 = log.record("bob", "alert.ack", alert=7)
    assert e1 is not None and e2 is not None
    assert (e1["seq"], e2["seq"]) == (1, 2)
    assert e1["prev_hash"] == GENESIS and e2["prev_hash"] == e1["hash"]
    assert e1["details"]["path"] == str(tmp_path)  # non-JSON values are stored as text
    rows = [json.loads(x) for x in _lines(p)]
    assert rows == [e1, e2]
    assert all(entry_hash(r) == r["hash"] for r in rows)
    assert tuple(verify(p)) == (True, 2, None, "")
    assert head(p) == (2, e2["hash"])


def test_edited_line_is_detected(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    _fill(p)
    lines = _lines(p)
    lines[2] = lines[2].replace('"version":"2"', '"version":"9"')
    p.write_text("".join(lines))
    ok, n, bad, reason = verify(p)
    assert (ok, n, bad) == (False, 2, 3)
    assert "edited" in reason and ":3:" in reason


def test_edit_with_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    _fill(p)
    lines = _lines(p)
    entry = json.loads(lines[1])
    entry["actor"] = "mallory"
    entry["hash"] = entry_hash(entry)  # the forger fixes this line's hash...
    lines[1] = json.dumps(entry) + "\n"
    p.write_text("".join(lines))
    res = verify(p)
    assert not res.ok and res.first_bad_line == 3  # ...but line 3 still points at the old one


@pytest.mark.parametrize("mutate", ["delete", "swap", "insert_copy"])
def test_removed_reordered_or_duplicated_lines_are_detected(tmp_path: Path, mutate: str) -> None:
    p = tmp_path / "audit.jsonl"
    _fill(p)
    lines = _lines(p)
    if mutate == "delete":
        del lines[1]
    elif mutate == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        lines.insert(3, lines[1])
    p.write_text("".join(lines))
    res = verify(p)
    assert not res.ok
    assert res.first_bad_line == (4 if mutate == "insert_copy" else 2)
    assert "removed" in res.reason or "moved" in res.reason or "inserted" in res.reason


def test_truncation_is_caught_with_a_recorded_head(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    _fill(p)
    _, recorded = head(p)
    assert verify(p, expect_head=recorded).ok
    p.write_text("".join(_lines(p)[:3]))
    assert verify(p).ok  # a shorter chain is still a chain...
    res = verify(p, expect_head=recorded)
    assert not res.ok and "truncated" in res.reason  # ...unless the old head is known


def test_torn_tail_stops_appends_instead_of_hiding_it(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    _fill(p, 2)
    with p.open("ab") as f:
        f.write(b'{"seq":3,"ts":1')
    res = verify(p)
    assert not res.ok and res.first_bad_line == 3 and "incomplete" in res.reason
    with pytest.raises(StorageError, match="audit verify"):
        AuditLog(p).record("alice", "model.promote")


def test_api_compatible_write(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    log = AuditLog(p)
    log.write(action="acknowledge", person="bob", client="10.0.0.5", target="alert/4",
              note=None, result="ok")
    log.write(action="auth_failed", person=None, client="10.0.0.6", path="/api/x")
    rows = [json.loads(x) for x in _lines(p)]
    assert rows[0]["actor"] == "bob" and rows[0]["action"] == "acknowledge"
    assert rows[0]["details"] == {"client": "10.0.0.5", "target": "alert/4", "note": None,
                                  "result": "ok"}
    assert rows[1]["actor"] == "anonymous"
    assert verify(p).ok


def test_non_finite_details_keep_the_chain_valid(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    AuditLog(p).record("system", "canary.rollback", p99=float("inf"), score=float("nan"))
    assert verify(p).ok
    assert json.loads(_lines(p)[0])["details"] == {"p99": "inf", "score": "nan"}


def test_disabled_log_writes_nothing(tmp_path: Path) -> None:
    assert AuditLog(None).record("x", "y") is None
    assert list(tmp_path.iterdir()) == []


def test_missing_file_does_not_verify(tmp_path: Path) -> None:
    res = verify(tmp_path / "nope.jsonl")
    assert not res.ok and "cannot read" in res.reason


def _append_many(path: str, who: str, n: int) -> None:
    log = AuditLog(Path(path))
    for i in range(n):
        log.record(who, "test.append", i=i)


def test_concurrent_threads_and_processes_keep_one_chain(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    shared = AuditLog(p)  # one object shared by threads, plus separate processes
    threads = [threading.Thread(target=lambda k=k: [shared.record(f"t{k}", "test.append", i=i)
                                                    for i in range(40)]) for k in range(3)]
    # spawn: a fork while a thread holds the flock would hand the lock to the child
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(p), f"p{k}", 40)) for k in range(3)]
    for w in [*threads, *procs]:
        w.start()
    for t in threads:
        t.join()
    for pr in procs:
        pr.join(30)
        assert pr.exitcode == 0
    res = verify(p)
    assert res.ok, res.reason
    assert res.n_entries == 240
