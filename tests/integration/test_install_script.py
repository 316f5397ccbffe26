"""deploy/install.sh staged into a throwaway prefix: idempotent, keeps config, uninstalls.

The script runs for real (bash, venv creation, pip) with --prefix, which stages
the tree and records the system changes it skipped (apt-get, useradd, chown,
systemctl) instead of making them. pip installs a tiny stand-in wheel so the
test exercises the pip path without downloading the agent's dependencies.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from edge.core.config import load_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "install.sh"


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                       timeout=120)
    if ok:
        assert r.returncode == 0, f"install.sh {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """path -> (sha256 or 'dir', mtime_ns, mode) for everything under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if p.is_symlink():
            digest = "link:" + os.readlink(p)
        elif p.is_dir():
            digest = "dir"
        else:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
        out[str(p.relative_to(root))] = (digest, st.st_mtime_ns, st.st_mode)
    return out


def make_wheel(dest: Path) -> Path:
    """A minimal valid wheel named forewarn with a `forewarn` console script."""
    name = "forewarn-0.0.1-py3-none-any.whl"
    files = {
        "forewarn_stub/__init__.py": b"def main() -> None:\n    print('stub')\n",
        "forewarn-0.0.1.dist-info/METADATA":
            b"Metadata-Version: 2.1\nName: forewarn\nVersion: 0.0.1\n",
        "forewarn-0.0.1.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "forewarn-0.0.1.dist-info/entry_points.txt":
            b"[console_scripts]\nforewarn = forewarn_stub:main\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append("forewarn-0.0.1.dist-info/RECORD,,")
    wheel = dest / name
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
        z.writestr("forewarn-0.0.1.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


def test_shellcheck_is_clean() -> None:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.fail("shellcheck is not installed (apt-get install -y shellcheck)")
    scripts = [SCRIPT, REPO / "deploy" / "mosquitto" / "mkpasswd.sh"]
    r = subprocess.run([exe, "--severity=style", *map(str, scripts)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout


def test_install_twice_changes_nothing_then_uninstall_and_purge(tmp_path: Path) -> None:
    root = tmp_path / "root"
    wheel = make_wheel(tmp_path)
    first = run("--prefix", str(root), "--wheel", str(wheel))
    assert "installed" in first.stdout

    # the staged tree
    venv = root / "opt/forewarn/venv"
    assert (venv / "bin/forewarn").is_file()
    unit = root / "etc/systemd/system/forewarn-agent.service"
    assert unit.read_text() == (REPO / "systemd/forewarn-agent.service").read_text()
    cfg = load_config(root / "etc/forewarn/agent.toml")
    assert cfg.state_dir == Path("/var/lib/forewarn")
    for secret in ("mqtt-password", "api-tokens"):
        assert (root / "etc/forewarn/credentials" / secret).stat().st_mode & 0o777 == 0o600
    assert len((root / "etc/forewarn/credentials/mqtt-password").read_text().strip()) >= 24
    assert (root / "var/lib/forewarn/models").is_dir()
    assert (root / "opt/forewarn/share/doc/operations.md").is_file()
    skipped = (root / "opt/forewarn/skipped-actions.txt").read_text()
    for action in ("apt-get install -y mosquitto", "useradd --system", "chown forewarn:forewarn",
                   "systemctl enable forewarn-agent.service"):
        assert action in skipped

    before = snapshot(root)
    second = run("--prefix", str(root), "--wheel", str(wheel))
    assert snapshot(root) == before, "second run changed the tree"
    assert "wrote" not in second.stdout and "created" not in second.stdout
    assert "installed" not in second.stdout

    # an admin's edits and secrets survive a re-install
    (root / "etc/forewarn/agent.toml").write_text('site = "plant7"\n[bundle]\npath = "b"\n')
    password = (root / "etc/forewarn/credentials/mqtt-password").read_text()
    (root / "var/lib/forewarn/alerts.db").write_bytes(b"state")
    run("--prefix", str(root), "--wheel", str(wheel))
    assert load_config(root / "etc/forewarn/agent.toml").site == "plant7"
    assert (root / "etc/forewarn/credentials/mqtt-password").read_text() == password

    # uninstall keeps config and data
    out = run("--prefix", str(root), "--uninstall").stdout
    assert not (root / "opt/forewarn").exists()
    assert not unit.exists()
    assert (root / "var/lib/forewarn/alerts.db").read_bytes() == b"state"
    assert (root / "etc/forewarn/agent.toml").is_file()
    assert "kept" in out

    # purge removes them too
    run("--prefix", str(root), "--uninstall", "--purge")
    for gone in ("etc/forewarn", "var/lib/forewarn", "var/log/forewarn", "opt/forewarn"):
        assert not (root / gone).exists(), gone


def test_no_pip_creates_the_venv_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run("--prefix", str(root), "--no-pip", "--no-apt")
    assert (root / "opt/forewarn/venv/bin/python").exists()
    assert not (root / "opt/forewarn/venv/bin/forewarn").exists()
    assert "apt-get" not in (root / "opt/forewarn/skipped-actions.txt").read_text()


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    r = run("--prefix", str(tmp_path), "--purge", ok=False)
    assert r.returncode == 2 and "--purge only goes with --uninstall" in r.stderr
    r = run("--frobnicate", ok=False)
    assert r.returncode == 2 and "unknown option '--frobnicate'" in r.stderr
    assert not any(tmp_path.iterdir())
