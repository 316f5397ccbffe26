"""/metrics as central IT sees it: valid for promtool, and free of raw readings."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import httpx
import pytest

from edge.app import Agent
from tests.agentkit import Client, agent_config, wait_until
from tests.conftest import Broker, TrainedBundle
from trainer.cmapss import load_cmapss
from trainer.replayer import DEFAULT_SIGNALS

# A raw timestamp far from the agent's own clock, so any trace of it is a leak.
T0 = 1_600_000_000.0


def sentinel_stream(units: list[int]) -> tuple[list[tuple[str, dict[str, float], float]],
                                               set[float]]:
    """Real C-MAPSS readings, each nudged to a unique value that cannot occur by chance."""
    data = load_cmapss("FD001")
    msgs, sentinels = [], set()
    k = 0
    for u in units:
        series = data.test[u - 1].signals(DEFAULT_SIGNALS)
        for c in range(series.shape[1]):
            values = {}
            for name, v in zip(DEFAULT_SIGNALS, series[:, c], strict=True):
                k += 1
                s = round(float(v), 2) + 0.00001 * (1 + k % 97) + 0.0000001 * k
                values[name] = s
                sentinels.add(s)
            msgs.append((f"engine-{u}", values, T0 + c))
    return msgs, sentinels


def leaks(body: bytes, sentinels: set[float], timestamps: set[float]) -> list[str]:
    found = []
    text = body.decode(errors="replace")
    for s in sentinels:
        # Only forms that still carry the nudge identify the sentinel: %.7g of 392.0000293
        # is "392", which any counter may print, so such a form proves nothing.
        for form in {repr(s), f"{s:.6f}", f"{s:.7g}"}:
            if _carries_nudge(form) and form in text:
                found.append(f"{s} as text {form!r}")
        for fmt in ("<f", ">f", "<d", ">d"):
            if struct.pack(fmt, s) in body:
                found.append(f"{s} packed {fmt}")
    for t in timestamps:
        for form in (repr(t), f"{t:.0f}", f"{t:.6g}", f"{t:.9e}"):
            if form in text:
                found.append(f"timestamp {t} as {form!r}")
    return found


def _carries_nudge(form: str) -> bool:
    """True when the text differs from the reading's 2-decimal original, i.e. names a sentinel."""
    value = float(form)
    return value != round(value, 2)


def test_metrics_pass_promtool_and_carry_no_raw_value(
        tmp_path: Path, mosquitto: Broker, cmapss_bundle: TrainedBundle) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: apt-get install -y prometheus (.ci/run does)")
    cfg = agent_config(tmp_path / "state", cmapss_bundle.path, cmapss_bundle.public_key,
                       mosquitto.port, drift={"interval_windows": 25})
    agent = Agent(cfg)
    agent.start()
    pub = Client(mosquitto.port)
    msgs, sentinels = sentinel_stream([1, 2, 3])
    try:
        wait_until(agent.conn.connected.is_set, what="agent connected")
        for asset, values, ts in msgs:
            pub.publish(f"forewarn/site1/{asset}", {"ts": ts, "values": values})
        wait_until(lambda: agent.metrics.registry.get_sample_value(
            "forewarn_readings_received_total") == len(msgs) * len(DEFAULT_SIGNALS),
            what="all readings accepted (none out of range)")
        wait_until(lambda: (agent.metrics.registry.get_sample_value(
            "forewarn_drift_intervals_total") or 0) >= 3, what="drift intervals closed")
        base = f"http://127.0.0.1:{cfg.api.port}"
        wait_until(lambda: _get(f"{base}/healthz") == 200, what="API up")
        body = httpx.get(f"{base}/metrics").content
    finally:
        pub.close()
        agent.stop()

    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    assert b"forewarn_drift_score_psi" in body and b"forewarn_windows_scored_total" in body
    timestamps = {ts for _, _, ts in msgs}
    assert leaks(body, sentinels, timestamps) == []


def test_the_leak_scanner_finds_a_planted_value() -> None:
    """The scanner above must be able to fail: plant one sentinel and one timestamp."""
    s, t = 642.4512345, T0 + 17
    body = (f"forewarn_x {s!r}\n".encode() + struct.pack("<d", 1.5) +
            f"forewarn_y {t:.0f}\n".encode())
    found = leaks(body, {s, 1.5}, {t})
    assert f"{s} as text {repr(s)!r}" in found
    assert "1.5 packed <d" in found
    assert any(f.startswith(f"timestamp {t}") for f in found)


def test_the_leak_scanner_ignores_a_form_that_lost_the_nudge() -> None:
    """CI once flagged 392.0000293 because its %.7g is "392", a number any counter prints."""
    s = 392.0000293
    assert leaks(b"forewarn_bytes_total 392\n", {s}, set()) == []
    assert leaks(f"forewarn_x {s:.6f}\n".encode(), {s}, set()) == [f"{s} as text '392.000029'"]


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return 0
