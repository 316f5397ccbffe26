"""Scenario 7: access. The agent runs as ``nobody`` (setpriv), writes only inside its
state directory (every write syscall traced with strace), and its API refuses
mutations without a valid token and answers 429 to repeated bad tokens, while a
valid token from the same address still works.
Escaping of MQTT-sourced names on the page: tests/browser/test_page.py
(test_strings_from_mqtt_render_as_text), not duplicated here.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agentkit import wait_until
from tests.conftest import Broker
from tests.faults.conftest import T0, Publisher, agent_process_config, report

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
WRITE = re.compile(r'^\d+\s+(openat|open|creat|mkdir|mkdirat|rename|renameat2?|unlink|unlinkat|'
                   r'link|symlink|truncate)\((?:AT_FDCWD, )?"([^"]+)"(.*)$')


@pytest.fixture
def world_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="forewarn-access-"))  # readable by nobody
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def written_paths(trace: Path) -> set[str]:
    out = set()
    for line in trace.read_text(errors="replace").splitlines():
        m = WRITE.match(line)
        if not m or "= -1" in m.group(3):
            continue
        call, path, rest = m.groups()
        if call in ("openat", "open") and not re.search(r"O_WRONLY|O_RDWR|O_CREAT", rest):
            continue
        out.add(path)
    return out


def test_unprivileged_agent_writes_only_its_state_and_guards_its_api(
        world_dir: Path, mosquitto: Broker, bundle: tuple[Path, Path],
        agent_process: Any) -> None:
    src, pub_key = bundle
    shutil.copytree(src, world_dir / "bundle")
    shutil.copy(pub_key, world_dir / "signing.pub")
    tokens = world_dir / "tokens"
    tokens.write_text("ana:ana-0123456789abcdef\n")
    tokens.chmod(0o644)
    state = world_dir / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    cfg = agent_process_config(state, world_dir / "bundle", world_dir / "signing.pub",
                               mosquitto.port, api={"tokens_file": str(tokens)},
                               drift={"enabled": False})
    trace = world_dir / "trace.txt"
    strace = ["strace", "-f", "-qq", "-o", str(trace), "-e",
              "trace=open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,"
              "unlinkat,link,symlink,truncate"]
    agent = agent_process(cfg, prefix=[*strace, *NOBODY], workdir=world_dir / "run")
    agent.start()
    pub = Publisher(mosquitto.port, "fault-pub-7")
    try:
        wait_until(agent.up, timeout=30, what="agent API up (running as nobody)")
        wait_until(lambda: "subscribed to " in agent.log_text(), what="mqtt")
        for i in range(30):
            pub.reading("press-1", T0 + i, 100.0)
        status = f"{agent.api}/api/status"
        wait_until(lambda: httpx.get(status).json()["agent"]["windows_scored"] > 20,
                   what="windows scored as nobody")
        alert = wait_until(lambda: httpx.get(f"{agent.api}/api/alerts").json()["items"],
                           what="alert open")[0]
        url = f"{agent.api}/api/alerts/{alert['id']}/ack"
        codes = [httpx.post(url, json={}).status_code]
        codes += [httpx.post(url, json={}, headers={"Authorization": f"Bearer wrong-{i}"})
                  .status_code for i in range(6)]
        good_after = httpx.post(url, json={}, headers={
            "Authorization": "Bearer ana-0123456789abcdef"}).status_code
        state_alert = httpx.get(f"{agent.api}/api/alerts/{alert['id']}").json()
    finally:
        pub.close()
        # SIGTERM goes to the agent itself (strace would only detach on it).
        assert agent.proc is not None
        kids = Path(f"/proc/{agent.proc.pid}/task/{agent.proc.pid}/children").read_text()
        for pid in kids.split():
            os.kill(int(pid), signal.SIGTERM)
        try:
            rc = agent.proc.wait(20)
        except subprocess.TimeoutExpired:
            rc = None  # asserted below, once the report is out
            for pid in kids.split():  # killing strace alone would orphan the agent
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            agent.kill()
    owners = {p.stat().st_uid for p in state.rglob("*")}
    written = written_paths(trace)
    outside = sorted(p for p in written
                     if not os.path.realpath(p).startswith(str(state) + "/")
                     and p != str(state) and not p.startswith("/dev/"))
    report("7 access", injected="agent as nobody under strace; 1 tokenless + 6 bad-token acks",
           responses=codes, valid_token_after_lockout=good_after,
           files_written=len(written), written_outside_state=outside, state_owners=owners)
    report("7 access", clean_exit_on_sigterm_under_strace=rc == 0)
    assert codes[0] == 401 and codes[1:6] == [401] * 5 and codes[6] == 429
    assert good_after == 200, "a valid token is refused for someone else's bad guesses"
    assert state_alert.get("state", state_alert.get("alert", {}).get("state")) == "acknowledged"
    assert owners == {65534}
    assert written and outside == [], f"the agent wrote outside its state dir: {outside}"
    assert rc == 0, f"the agent did not exit cleanly on SIGTERM under strace (status {rc})"
