"""systemd/forewarn-agent.service: hardened, valid, and compatible with the agent's runtime.

``systemd-analyze`` works offline (no running systemd needed). ``verify`` insists
that ExecStart= binaries exist, so it checks a copy of the unit whose
/opt/forewarn/venv/bin/forewarn is rewritten to this checkout's venv script;
nothing else is changed. The unit cannot be started here (systemd is not PID 1
in CI), so MemoryDenyWriteExecute= is checked with the kernel's equivalent
prctl(PR_SET_MDWE) around an onnxruntime inference instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "forewarn-agent.service"
INSTALLED_EXE = "/opt/forewarn/venv/bin/forewarn"
MAX_EXPOSURE = 2.0


def analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is missing (apt-get install -y systemd)")
    return exe


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_security_exposure_is_at_most_2() -> None:
    r = subprocess.run([analyze(), "security", "--offline=true", "--no-pager", str(UNIT)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, f"no overall exposure in output:\n{r.stdout}\n{r.stderr}"
    exposure = float(m.group(1))
    open_items = [line for line in r.stdout.splitlines() if line.startswith("✗")]
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n" + "\n".join(
        open_items)


def test_verify_is_clean(tmp_path: Path) -> None:
    venv_exe = Path(sys.executable).parent / "forewarn"
    assert venv_exe.exists(), f"{venv_exe} missing: install the project into the venv"
    text = UNIT.read_text()
    assert text.count(INSTALLED_EXE) == 2  # ExecStartPre= and ExecStart=
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED_EXE, str(venv_exe)))
    r = subprocess.run([analyze(), "verify", str(copy)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (
        r.stdout + r.stderr)


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: an unknown directive and a missing binary are reported."""
    venv_exe = Path(sys.executable).parent / "forewarn"
    broken = UNIT.read_text().replace(INSTALLED_EXE, str(venv_exe), 1)
    broken = broken.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    copy = tmp_path / UNIT.name
    copy.write_text(broken)
    r = subprocess.run([analyze(), "verify", str(copy)], capture_output=True, text=True,
                       timeout=60)
    out = r.stdout + r.stderr
    assert "NoNewPrivilege" in out
    if not Path(INSTALLED_EXE).exists():
        assert INSTALLED_EXE in out


def test_unit_has_the_appliance_contract() -> None:
    d = directives(UNIT.read_text())
    expect = {
        "Type": ["notify"], "NotifyAccess": ["main"], "WatchdogSec": ["30"],
        "Restart": ["on-failure"], "User": ["forewarn"], "StateDirectory": ["forewarn"],
        "ConfigurationDirectory": ["forewarn"], "LogsDirectory": ["forewarn"],
        "MemoryDenyWriteExecute": ["yes"], "NoNewPrivileges": ["yes"],
    }
    for key, value in expect.items():
        assert d.get(key) == value, f"{key}={d.get(key)}"
    assert d["ExecStartPre"] == [
        f"{INSTALLED_EXE} agent --config /etc/forewarn/agent.toml --check-config"]
    assert d["ExecStart"] == [f"{INSTALLED_EXE} agent --config /etc/forewarn/agent.toml"]
    assert {c.split(":")[0] for c in d["LoadCredential"]} == {"mqtt-password", "api-tokens"}
    assert "MemoryMax" in d and "TasksMax" in d
    # CAP_NET_BIND_SERVICE and friends: the agent needs no capability at all
    assert d["CapabilityBoundingSet"] == [""] and d["AmbientCapabilities"] == [""]


def test_agent_runtime_works_without_writable_executable_memory() -> None:
    """MemoryDenyWriteExecute=yes must not break onnxruntime, numpy, pyarrow or the
    compaction child process."""
    code = textwrap.dedent("""
        import ctypes, mmap, sys
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(65, 1, 0, 0, 0) != 0:   # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
            sys.exit(f"PR_SET_MDWE failed (errno {ctypes.get_errno()}); kernel >= 6.3 needed")
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            sys.exit("W+X mapping allowed: MDWE not in force")
        except PermissionError:
            pass
        import numpy as np, onnxruntime as ort, pyarrow, fastapi, paho.mqtt.client
        from onnx import TensorProto, helper
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
        node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=0)
        model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                                  opset_imports=[helper.make_opsetid("", 13)])
        so = ort.SessionOptions(); so.intra_op_num_threads = 1
        s = ort.InferenceSession(model.SerializeToString(), so,
                                 providers=["CPUExecutionProvider"])
        out = s.run(None, {"x": np.arange(8, dtype=np.float32).reshape(2, 4)})[0]
        assert out.tolist() == [1.5, 5.5], out
        # The history's compaction child inherits MDWE and loads pyarrow's Parquet writer.
        import tempfile
        from pathlib import Path
        from edge.history.parquet import ParquetStore
        root = Path(tempfile.mkdtemp())
        st = ParquetStore(root, background=True, child=True)
        st.append("pump-1", "temp", [1_700_000_000.0, 1_700_000_001.0], [1.0, 2.0])
        st.close(compact=True)
        assert st.compactions == 1 and len(list(root.rglob("*.parquet"))) == 1, st.compactions
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


# --- the fleet service's unit ---

FLEET_UNIT = REPO / "systemd" / "forewarn-fleet.service"
FLEET_EXE = "/opt/forewarn/venv/bin/forewarn-fleet"


def test_fleet_unit_security_exposure_is_at_most_2() -> None:
    r = subprocess.run([analyze(), "security", "--offline=true", "--no-pager", str(FLEET_UNIT)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, f"no overall exposure in output:\n{r.stdout}\n{r.stderr}"
    open_items = [line for line in r.stdout.splitlines() if line.startswith("✗")]
    assert float(m.group(1)) <= MAX_EXPOSURE, "\n".join(open_items)


def test_fleet_unit_verify_is_clean(tmp_path: Path) -> None:
    venv_exe = Path(sys.executable).parent / "forewarn-fleet"
    assert venv_exe.exists(), f"{venv_exe} missing: install the project into the venv"
    text = FLEET_UNIT.read_text()
    assert text.count(FLEET_EXE) == 1
    copy = tmp_path / FLEET_UNIT.name
    copy.write_text(text.replace(FLEET_EXE, str(venv_exe)))
    r = subprocess.run([analyze(), "verify", str(copy)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (
        r.stdout + r.stderr)


def test_fleet_unit_matches_the_config_example() -> None:
    """The example's secrets are the unit's credentials; the service runs unprivileged."""
    import tomllib

    d = directives(FLEET_UNIT.read_text())
    assert d["Type"] == ["notify"] and d["User"] == ["forewarn-fleet"]
    assert d["ExecStart"] == [f"{FLEET_EXE} serve --config /etc/forewarn-fleet/fleet.toml"]
    assert d["CapabilityBoundingSet"] == [""] and d["MemoryDenyWriteExecute"] == ["yes"]
    creds = {c.split(":")[0] for c in d["LoadCredential"]}
    example = (REPO / "deploy" / "fleet.toml.example").read_text()
    uncommented = re.sub(r"(?m)^#\s*(password_file = .*)$", r"\1", example)
    raw = tomllib.loads(uncommented)
    for secret in (raw["broker"]["password_file"], raw["api"]["tokens_file"]):
        path = Path(secret)
        assert str(path.parent) == "/run/credentials/forewarn-fleet.service", secret
        assert path.name in creds, f"{secret} is not a LoadCredential= of the unit"


def test_fleet_runtime_works_without_writable_executable_memory(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes must not break the fleet's stack: Ed25519, SQLite,
    FastAPI/uvicorn, paho, psycopg."""
    code = textwrap.dedent("""
        import ctypes, mmap, sqlite3, sys
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(65, 1, 0, 0, 0) != 0:
            sys.exit(f"PR_SET_MDWE failed (errno {ctypes.get_errno()}); kernel >= 6.3 needed")
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            sys.exit("W+X mapping allowed: MDWE not in force")
        except PermissionError:
            pass
        import psycopg, uvicorn, paho.mqtt.client
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from fleet.service import FleetService
        k = Ed25519PrivateKey.generate()
        k.public_key().verify(k.sign(b"x"), b"x")
        db = sqlite3.connect(sys.argv[1])
        db.execute("create table t (x)")
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "t.sqlite")], cwd=REPO,
                       capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


# --- the retrain service and its timer ---

RETRAIN_UNIT = REPO / "systemd" / "forewarn-retrain.service"
RETRAIN_TIMER = REPO / "systemd" / "forewarn-retrain.timer"


def test_retrain_unit_security_exposure_is_at_most_2() -> None:
    r = subprocess.run([analyze(), "security", "--offline=true", "--no-pager",
                        str(RETRAIN_UNIT)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, f"no overall exposure in output:\n{r.stdout}\n{r.stderr}"
    open_items = [line for line in r.stdout.splitlines() if line.startswith("✗")]
    assert float(m.group(1)) <= MAX_EXPOSURE, "\n".join(open_items)


def test_retrain_unit_and_timer_verify_clean(tmp_path: Path) -> None:
    venv_exe = Path(sys.executable).parent / "forewarn"
    text = RETRAIN_UNIT.read_text()
    assert text.count(INSTALLED_EXE) == 1
    (tmp_path / RETRAIN_UNIT.name).write_text(text.replace(INSTALLED_EXE, str(venv_exe)))
    (tmp_path / RETRAIN_TIMER.name).write_text(RETRAIN_TIMER.read_text())
    r = subprocess.run([analyze(), "verify", str(tmp_path / RETRAIN_UNIT.name),
                        str(tmp_path / RETRAIN_TIMER.name)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (
        r.stdout + r.stderr)


def test_retrain_unit_contract() -> None:
    """A low-priority, capped oneshot as the agent's user, running a command line that
    `forewarn retrain` accepts, with the key the example config names."""
    import argparse
    import shlex
    import tomllib

    from trainer.retrain_cli import EXIT_REFUSED, add_arguments

    d = directives(RETRAIN_UNIT.read_text())
    for key, value in {"Type": ["oneshot"], "User": ["forewarn"], "Group": ["forewarn"],
                       "StateDirectory": ["forewarn"], "CPUQuota": ["50%"], "Nice": ["15"],
                       "IOSchedulingClass": ["idle"], "MemoryMax": ["1G"],
                       "CPUSchedulingPolicy": ["idle"],
                       "SuccessExitStatus": [str(EXIT_REFUSED)],
                       "MemoryDenyWriteExecute": ["yes"], "PrivateNetwork": ["yes"],
                       "CapabilityBoundingSet": [""]}.items():
        assert d.get(key) == value, f"{key}={d.get(key)}"
    agent = directives(UNIT.read_text())
    assert int(d["Nice"][0]) > int(agent["Nice"][0])
    (exec_start,) = d["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[:2] == [INSTALLED_EXE, "retrain"]
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(argv[2:])
    assert args.if_needed and str(args.config) == "/etc/forewarn/agent.toml"
    (cred,) = d["LoadCredential"]
    name = cred.split(":")[0]
    example = (REPO / "deploy" / "forewarn.toml.example").read_text()
    raw = tomllib.loads(re.sub(r"(?m)^#\s*(key = .*)$", r"\1", example))
    assert raw["retrain"]["key"] == f"/run/credentials/{RETRAIN_UNIT.name}/{name}"
    t = directives(RETRAIN_TIMER.read_text())
    assert t["Unit"] == [RETRAIN_UNIT.name] and t["Persistent"] == ["yes"]
    assert t["OnCalendar"] and t["WantedBy"] == ["timers.target"]


def test_retrain_fits_without_writable_executable_memory() -> None:
    """MemoryDenyWriteExecute=yes must not break scikit-learn, skl2onnx or onnxruntime:
    both anomaly families fit and export under the kernel's equivalent."""
    code = textwrap.dedent("""
        import ctypes, mmap, sys
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(65, 1, 0, 0, 0) != 0:
            sys.exit(f"PR_SET_MDWE failed (errno {ctypes.get_errno()}); kernel >= 6.3 needed")
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            sys.exit("W+X mapping allowed: MDWE not in force")
        except PermissionError:
            pass
        import numpy as np
        from edge.models.infer import Scorer
        from trainer.anomaly_pipeline import fit_bundle
        from trainer.config import TrainingConfig
        x = np.random.default_rng(0).normal(size=(400, 2, 10)).astype(np.float32)
        for fam in ({"family": "pca"}, {"family": "isoforest", "n_estimators": 20}):
            cfg = TrainingConfig.model_validate({"bundle": {"name": "x"}, "model": fam,
                                                 "data": {"signals": ["a", "b"]}})
            fitted = fit_bundle(cfg, x, x[:, :, 0].T.astype(np.float64))[0]
            Scorer(fitted.bundle)  # self-test in onnxruntime
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=180, cwd=REPO, env={"PYTHONPATH": str(REPO),
                                                   "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


# --- the commissioning learner's unit and timer ---

COMMISSION_UNIT = REPO / "systemd" / "forewarn-commission.service"
COMMISSION_TIMER = REPO / "systemd" / "forewarn-commission.timer"


def test_commission_unit_is_hardened_valid_and_limited(tmp_path: Path) -> None:
    r = subprocess.run([analyze(), "security", "--offline=true", "--no-pager",
                        str(COMMISSION_UNIT)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m and float(m.group(1)) <= MAX_EXPOSURE, r.stdout[-2000:]
    venv_exe = Path(sys.executable).parent / "forewarn"
    text = COMMISSION_UNIT.read_text()
    assert text.count(INSTALLED_EXE) == 1
    (tmp_path / COMMISSION_UNIT.name).write_text(text.replace(INSTALLED_EXE, str(venv_exe)))
    shutil.copy(COMMISSION_TIMER, tmp_path / COMMISSION_TIMER.name)
    r = subprocess.run([analyze(), "verify", str(tmp_path / COMMISSION_UNIT.name),
                        str(tmp_path / COMMISSION_TIMER.name)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (
        r.stdout + r.stderr)
    d = directives(text)
    assert d["ExecStart"] == [
        f"{INSTALLED_EXE} commission --config /etc/forewarn/agent.toml --once"]
    # The limits that keep the agent's alert latency (bench/commission_latency.py).
    assert (d["CPUQuota"], d["MemoryMax"], d["Nice"]) == (["50%"], ["512M"], ["19"])
    assert d["CPUSchedulingPolicy"] == ["idle"]
    env = " ".join(d["Environment"]).split()
    assert {"OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1", "MKL_NUM_THREADS=1"} <= set(env)
    assert d["User"] == directives(UNIT.read_text())["User"]  # the agent's files
    assert d["PrivateNetwork"] == ["yes"] and d["MemoryDenyWriteExecute"] == ["yes"]
