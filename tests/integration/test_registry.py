"""The bundle registry on a real state directory: install, refusals, pointers, audit, CLI.

Also: loading and unloading a Scorer 200 times must not grow RSS by more than 10 %,
and the fleet rollout playbook is run for real against localhost.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import onnx
import pytest

from edge.cli.models import main as cli
from edge.core.audit import AuditLog, verify
from edge.core.errors import BundleError, SignatureError
from edge.models.registry import Registry
from edge.models.signing import load_private_key, sha256_file, sign_bundle
from tests.bundlefactory import make_bundle, mean_graph

REPO = Path(__file__).resolve().parents[2]
SIGNALS = ["a", "b"]


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    return tmp_path / "src"


def _bundle(src: Path, version: str, **kw: object) -> tuple[Path, Path]:
    return make_bundle(src, signals=SIGNALS, version=version, **kw)  # type: ignore[arg-type]


def _registry(tmp_path: Path, pub: Path) -> Registry:
    state = tmp_path / "state"
    return Registry(state / "models", [pub], audit=AuditLog(state / "audit.jsonl"))


def _tar(bundle: Path, out: Path, arc_prefix: str = "test-model/1") -> Path:
    with tarfile.open(out, "w:gz") as tf:
        tf.add(bundle, arcname=arc_prefix)
    return out


def _resign(bundle: Path, key_dir: Path) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    m["model_sha256"] = sha256_file(bundle / "model.onnx")
    (bundle / "manifest.json").write_text(json.dumps(m))
    sign_bundle(bundle, load_private_key(key_dir / "signing.key"))


def _audit(tmp_path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in (tmp_path / "state/audit.jsonl").read_text().splitlines()]


def test_install_from_directory_becomes_active_read_only_and_audited(
        tmp_path: Path, src: Path) -> None:
    b, pub = _bundle(src, "1")
    reg = _registry(tmp_path, pub)
    e = reg.install(b, actor="alice")
    assert (e.name, e.version, e.active, e.status) == ("test-model", "1", True, "installed")
    assert e.signed_by and e.installed_by == "alice"
    dest = reg.active_path("test-model")
    assert dest == tmp_path / "state/models/test-model/1"
    assert sorted(p.name for p in dest.iterdir()) == ["INSTALLED.json", "SIGNATURE",
                                                      "manifest.json", "model.onnx"]
    assert all(p.stat().st_mode & 0o222 == 0 for p in dest.iterdir())
    assert dest.stat().st_mode & 0o222 == 0
    assert (dest.parent / "ACTIVE").read_text() == "1\n"
    assert not (tmp_path / "state/models/.staging").exists()
    last = _audit(tmp_path)[-1]
    assert last["action"] == "model.install" and last["actor"] == "alice"
    assert last["details"]["version"] == "1"  # type: ignore[index]


@pytest.mark.parametrize("prefix", ["test-model/1", "."])
def test_install_from_tarball(tmp_path: Path, src: Path, prefix: str) -> None:
    b, pub = _bundle(src, "1")
    reg = _registry(tmp_path, pub)
    e = reg.install(_tar(b, tmp_path / "b.tar.gz", prefix))
    assert e.active and (e.path / "model.onnx").read_bytes() == (b / "model.onnx").read_bytes()
    assert reg.load("test-model").manifest.version == "1"


def test_tampered_bundle_is_refused_and_the_active_one_untouched(
        tmp_path: Path, src: Path) -> None:
    b1, pub = _bundle(src, "1")
    b2, _ = _bundle(src, "2", warning=10.0)
    reg = _registry(tmp_path, pub)
    reg.install(b1)
    m = json.loads((b2 / "manifest.json").read_text())
    m["thresholds"]["warning"] = 1e9  # silence every alert, keep the old signature
    (b2 / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SignatureError, match="signature does not match") as exc:
        reg.install(b2)
    assert "signature/manifest check" in str(exc.value) and str(b2) in str(exc.value)
    assert not (tmp_path / "state/models/test-model/2").exists()
    assert reg.pointers("test-model").active == "1"
    assert [e.version for e in reg.list()] == ["1"]
    refused = _audit(tmp_path)[-1]
    assert refused["details"]["result"] == "refused"  # type: ignore[index]


def test_untrusted_signer_is_refused(tmp_path: Path, src: Path) -> None:
    b, _ = _bundle(src, "1")
    _, other_pub = _bundle(tmp_path / "other", "9", key_dir=tmp_path / "other-keys")
    reg = _registry(tmp_path, other_pub)
    with pytest.raises(SignatureError, match="not among the trusted keys"):
        reg.install(b)
    assert reg.names() == []


def _evil_tar(path: Path, good: Path, evil: tarfile.TarInfo, data: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        tf.add(good, arcname="test-model/1")
        tf.addfile(evil, io.BytesIO(data) if evil.isfile() else None)
    return path


@pytest.mark.parametrize(("member", "why"), [
    ("../../escaped", "path traversal"), ("/tmp/escaped-abs", "path traversal"),
    ("symlink", "is a link"), ("fifo", "special file")])
def test_hostile_tarballs_are_refused(tmp_path: Path, src: Path, member: str,
                                      why: str) -> None:
    b, pub = _bundle(src, "1")
    info = tarfile.TarInfo(member)
    if member == "symlink":
        info.name, info.type, info.linkname = "test-model/1/model.onnx2", tarfile.SYMTYPE, \
            "/etc/passwd"
    elif member == "fifo":
        info.name, info.type = "test-model/1/pipe", tarfile.FIFOTYPE
    else:
        info.size = 1
    reg = _registry(tmp_path, pub)
    with pytest.raises(BundleError, match=why) as exc:
        reg.install(_evil_tar(tmp_path / "evil.tar.gz", b, info))
    assert "refusing the whole archive" in str(exc.value)
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped-abs").exists()
    assert reg.names() == []


def test_oversize_archive_is_refused(tmp_path: Path, src: Path) -> None:
    b, pub = _bundle(src, "1")
    reg = Registry(tmp_path / "models", [pub], max_bundle_bytes=1000)
    with pytest.raises(BundleError, match="past 1000 bytes"):
        reg.install(_tar(b, tmp_path / "b.tar.gz"))
    with pytest.raises(BundleError, match="larger than 1000"):
        reg.install(b)


def test_nan_output_bundle_fails_its_self_test(tmp_path: Path, src: Path) -> None:
    b, pub = _bundle(src, "1")  # manifest has self-test cases with finite expectations
    (b / "model.onnx").write_bytes(mean_graph(2, 4, nan=True).SerializeToString())
    _resign(b, src / "keys")  # correctly signed, but the graph outputs NaN
    reg = _registry(tmp_path, pub)
    with pytest.raises(BundleError, match=r"graph/self-test check: .*self-test case 0 gave nan"):
        reg.install(b)
    assert reg.names() == []


def test_wrong_shape_bundle_fails_the_io_check(tmp_path: Path, src: Path) -> None:
    b, pub = _bundle(src, "1")
    onnx.save(mean_graph(2, 8), str(b / "model.onnx"))  # manifest says window 4
    _resign(b, src / "keys")
    reg = _registry(tmp_path, pub)
    with pytest.raises(BundleError, match=r"input shape .* does not match manifest"):
        reg.install(b)


def test_reinstall_same_is_a_no_op_but_different_content_is_refused(
        tmp_path: Path, src: Path) -> None:
    b, pub = _bundle(src, "1")
    reg = _registry(tmp_path, pub)
    reg.install(b)
    assert reg.install(b).status == "already installed"
    other, _ = _bundle(tmp_path / "src2", "1", warning=7.0, key_dir=src / "keys")
    with pytest.raises(BundleError, match=r"already installed with a different manifest\.json"):
        reg.install(other)
    assert json.loads((reg.active_path("test-model") / "manifest.json").read_text()
                      )["thresholds"]["warning"] == 50.0


def test_clearing_the_candidate_of_a_model_not_installed_is_refused(
        tmp_path: Path, src: Path) -> None:
    _, pub = _bundle(src, "1")
    reg = _registry(tmp_path, pub)
    with pytest.raises(BundleError, match="model '0' is not installed"):
        reg.set_candidate("0", None)  # was a FileNotFoundError (an HTTP 500 in the API)


def test_promote_rollback_and_candidate_pointers(tmp_path: Path, src: Path) -> None:
    reg = None
    for v in ("1", "2", "3"):
        b, pub = _bundle(src, v)
        reg = reg or _registry(tmp_path, pub)
        reg.install(b)
    assert reg is not None
    p = reg.pointers("test-model")
    assert (p.active, p.previous, p.candidate) == ("1", None, None)
    with pytest.raises(BundleError, match="no previous version"):
        reg.rollback("test-model")
    reg.set_candidate("test-model", "2")
    assert reg.pointers("test-model").candidate == "2"
    p = reg.promote("test-model", "2")
    assert (p.active, p.previous, p.candidate) == ("2", "1", None)  # promotion ends a canary
    p = reg.promote("test-model", "3")
    assert (p.active, p.previous) == ("3", "2")
    p = reg.rollback("test-model", reason="canary: error rate")
    assert (p.active, p.previous) == ("2", "3")
    assert reg.active_path("test-model").name == "2"
    flags = {e.version: (e.active, e.previous) for e in reg.list()}
    assert flags == {"1": (False, False), "2": (True, False), "3": (False, True)}
    reg.set_candidate("test-model", "3")
    reg.set_candidate("test-model", None, reason="canary p99")
    assert reg.pointers("test-model").candidate is None
    for bad in ("9", "../1"):
        with pytest.raises(BundleError):
            reg.promote("test-model", bad)
    actions = [(e["action"], e["details"]["result"]) for e in _audit(tmp_path)]  # type: ignore[index]
    assert actions[-2:] == [("model.promote", "refused"), ("model.promote", "refused")]
    assert ("model.rollback", "ok") in actions
    assert verify(tmp_path / "state/audit.jsonl").ok


def test_promote_refuses_a_version_edited_on_disk(tmp_path: Path, src: Path) -> None:
    reg = None
    for v in ("1", "2"):
        b, pub = _bundle(src, v)
        reg = reg or _registry(tmp_path, pub)
        reg.install(b)
    assert reg is not None
    target = tmp_path / "state/models/test-model/2/model.onnx"
    target.chmod(0o644)
    target.write_bytes(target.read_bytes() + b"\0")
    with pytest.raises(BundleError):
        reg.promote("test-model", "2")
    assert reg.pointers("test-model").active == "1"


def test_audit_chain_of_registry_operations_detects_edits_and_deletions(
        tmp_path: Path, src: Path) -> None:
    b1, pub = _bundle(src, "1")
    b2, _ = _bundle(src, "2")
    reg = _registry(tmp_path, pub)
    reg.install(b1)
    reg.install(b2)
    reg.promote("test-model", "2", actor="alice")
    reg.rollback("test-model", actor="bob")
    log = tmp_path / "state/audit.jsonl"
    assert tuple(verify(log)) == (True, 4, None, "")
    lines = log.read_text().splitlines(keepends=True)
    edited = log.with_name("edited.jsonl")
    edited.write_text("".join(lines).replace('"actor":"alice"', '"actor":"carol"'))
    assert verify(edited)[:3] == (False, 2, 3)
    deleted = log.with_name("deleted.jsonl")
    deleted.write_text("".join(lines[:2] + lines[3:]))
    assert verify(deleted)[:3] == (False, 2, 3)


def test_cli_install_list_promote_rollback_and_audit_verify(
        tmp_path: Path, src: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b1, pub = _bundle(src, "1")
    b2, _ = _bundle(src, "2")
    state = tmp_path / "state"
    state.mkdir()
    common = ["--state-dir", str(state), "--key", str(pub), "--actor", "ops"]
    assert cli(["model", "install", str(b1), *common]) == 0
    assert cli(["model", "install", str(_tar(b2, tmp_path / "b2.tgz", "x/2")), *common,
                "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[-1])["version"] == "2"
    assert cli(["model", "promote", "test-model", "2", *common]) == 0
    assert cli(["model", "promote", "test-model", "2", *common]) == 0
    assert "already active" in capsys.readouterr().out
    assert cli(["model", "list", "--state-dir", str(state), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["version"], e["active"], e["previous"]) for e in listed] == [
        ("1", False, True), ("2", True, False)]
    assert cli(["model", "rollback", "test-model", *common]) == 0
    assert cli(["model", "promote", "test-model", "7", *common]) == 2
    assert "not installed" in capsys.readouterr().err
    assert cli(["model", "install", str(b1), "--state-dir", str(state)]) == 2
    assert "no trusted keys" in capsys.readouterr().err
    log = state / "audit.jsonl"
    assert cli(["audit", "verify", str(log)]) == 0
    assert "chain intact" in capsys.readouterr().out
    log.write_text(log.read_text().replace('"actor":"ops"', '"actor":"eve"', 1))
    assert cli(["audit", "verify", str(log)]) == 1
    assert "FAILED" in capsys.readouterr().err


RSS_SCRIPT = """
import gc, sys
from pathlib import Path
import numpy as np
from edge.models.bundle import load_bundle
from edge.models.infer import Scorer

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

path, key = Path(sys.argv[1]), Path(sys.argv[2])
def cycle(n):
    for _ in range(n):
        s = Scorer(load_bundle(path, [key]))
        s.run(np.zeros((8, 2, 4), np.float32))
        del s
        gc.collect()
cycle(20)
before = rss_kb()
cycle(200)
print(before, rss_kb())
"""


def test_loading_and_unloading_200_times_does_not_grow_memory(tmp_path: Path, src: Path) -> None:
    b, pub = _bundle(src, "1")
    # a fresh interpreter: other tests' allocations would hide (or fake) growth
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(b), str(pub)], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=True)
    before, after = map(int, out.stdout.split())
    assert after <= before * 1.10, f"RSS grew from {before} kB to {after} kB over 200 loads"


def test_rollout_playbook_installs_and_promotes_on_localhost(tmp_path: Path, src: Path) -> None:
    exe = shutil.which("ansible-playbook")
    if exe is None:
        pytest.fail("ansible-playbook is not installed; install it with: "
                    "apt-get install -y ansible-core")
    b1, pub = _bundle(src, "1")
    b2, _ = _bundle(src, "2")
    state = tmp_path / "state"
    reg = Registry(state / "models", [pub])
    reg.install(b1)
    wrapper = tmp_path / "forewarn"
    wrapper.write_text(f"#!{sys.executable}\nimport sys\nfrom edge.cli.models import main\n"
                       "sys.exit(main())\n")
    wrapper.chmod(0o755)
    extra = {"bundle_file": str(_tar(b2, tmp_path / "test-model-2.tar.gz", "test-model/2")),
             "forewarn_hosts": "localhost", "forewarn_become": False,
             "forewarn_bin": str(wrapper), "forewarn_user": "root",
             "forewarn_incoming": str(tmp_path / "incoming"),
             "forewarn_registry_args": ["--state-dir", str(state), "--key", str(pub)]}
    play = REPO / "deploy/ansible/rollout-bundle.yml"
    env = {**os.environ, "PYTHONPATH": str(REPO), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"}
    syntax = subprocess.run([exe, "--syntax-check", "-i", "localhost,", str(play)],
                            capture_output=True, text=True, timeout=120, env=env)
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    r = subprocess.run([exe, "-i", "localhost,", "-c", "local", str(play),
                        "-e", json.dumps(extra)], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    p = reg.pointers("test-model")
    assert (p.active, p.previous) == ("2", "1")
    actors = {e["actor"] for e in [json.loads(x) for x in
                                   (state / "audit.jsonl").read_text().splitlines()]}
    assert any(a.startswith("ansible:") for a in actors)
