"""Site parameters bundles against a real template in a real registry: what is refused, why.

The learner's own output (fit on a pump's rows, packaged, signed with a site key)
installs and loads; a tampered params.npz, a wrong template, an untrusted key, a
lying self-test and parameters of the wrong shape are refused naming the reason,
and every attempt is in the audit log.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest

from edge.alerts.rules import RuleSpec
from edge.core.audit import AuditLog
from edge.core.errors import BundleError, SignatureError
from edge.core.metrics import Metrics
from edge.models.bundle import load_bundle
from edge.models.commissioning import Commissioning
from edge.models.infer import TemplateScorer
from edge.models.registry import Registry
from edge.models.signing import generate_keypair, load_private_key, sign_bundle
from edge.models.sitekey import read_site_params_manifest
from edge.models.sitestore import SiteParamsRegistry
from edge.models.template import PARAMS_FILE, write_params
from tests.commissionkit import REPO, ROWS, pump, train_template
from trainer.commission import Learner, Refused

RULE = RuleSpec(warning=3.0, k=3, n=5, clear_after=5)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train_template(tmp_path_factory.mktemp("template"))


@pytest.fixture
def site(tmp_path: Path, template: tuple[Path, Path]) -> dict[str, object]:
    path, central = template
    tpl = load_bundle(path, [central])
    generate_keypair(tmp_path / "site.key", tmp_path / "site.pub")
    learner = Learner(tpl, RULE)
    rows = pump(7, ROWS + 1)
    ts = 1_770_000_000.0 + np.arange(rows.shape[1])
    learned = learner.learn("pump-7", ts, rows)
    assert learned is not None
    out = learner.package(tmp_path / "out", "pump-7", learned,
                          load_private_key(tmp_path / "site.key"))
    audit = AuditLog(tmp_path / "audit.jsonl")
    reg = SiteParamsRegistry(tmp_path / "models", [central], audit,
                             site_keys=[tmp_path / "site.pub"])
    return {"tpl": tpl, "out": out, "reg": reg, "tmp": tmp_path, "central": central,
            "learner": learner, "ts": ts, "rows": rows}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def _results(tmp: Path) -> list[tuple[str, str]]:
    lines = (tmp / "audit.jsonl").read_text().splitlines()
    return [(json.loads(x)["details"].get("result"), json.loads(x)["details"].get("error", ""))
            for x in lines]


def test_the_learners_output_installs_and_loads(site: dict) -> None:
    reg, tpl = site["reg"], site["tpl"]
    sp = reg.install(site["out"], tpl, actor="test")
    assert sp.asset == "pump-7" and reg.pointers(tpl.manifest.name) == {
        "pump-7": sp.manifest.version}
    again = reg.load(tpl, "pump-7", sp.manifest.version)
    assert all(np.array_equal(again.params[k], sp.params[k]) for k in sp.params)
    assert sp.manifest.evidence["rows"] == ROWS
    assert reg.install(site["out"], tpl).manifest.version == sp.manifest.version  # idempotent
    assert _results(site["tmp"])[0] == ("ok", "")
    # the operator's check by hand takes the same path
    r = subprocess.run([sys.executable, "-m", "edge.cli", "bundle", "verify", str(sp.path),
                        "--key", str(site["central"]), "--site-key",
                        str(site["tmp"] / "site.pub"), "--template", str(tpl.path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "asset pump-7" in r.stdout and "self-test 4 cases passed" in r.stdout


@pytest.mark.parametrize("case", ["tampered", "other_template", "untrusted", "self_test",
                                  "shape"])
def test_refused_parameters_name_the_reason_and_are_audited(site: dict, case: str) -> None:
    tmp, tpl = site["tmp"], site["tpl"]
    bad = _copy(site["out"], tmp / f"bad-{case}")
    key = load_private_key(tmp / "site.key")
    manifest = json.loads((bad / "manifest.json").read_text())
    want: type[Exception] = BundleError
    if case == "tampered":  # one value changed after signing
        raw = bytearray((bad / PARAMS_FILE).read_bytes())
        raw[-9] ^= 0x01
        (bad / PARAMS_FILE).write_bytes(bytes(raw))
        want, match = SignatureError, "tampered"
    elif case == "other_template":  # learned for another version of the template
        manifest["template"]["version"] = "0000"
        (bad / "manifest.json").write_text(json.dumps(manifest))
        sign_bundle(bad, key, role="site")
        match = "not for .* in use \\(differs in version\\)"
    elif case == "untrusted":
        generate_keypair(tmp / "rogue.key", tmp / "rogue.pub")
        sign_bundle(bad, load_private_key(tmp / "rogue.key"), role="site")
        want, match = SignatureError, "not among the trusted keys"
    elif case == "self_test":  # the manifest claims scores these parameters do not give
        manifest["self_test"][0]["expected"] += 1.0
        (bad / "manifest.json").write_text(json.dumps(manifest))
        sign_bundle(bad, key, role="site")
        match = "self-test case 0"
    else:  # a parameter of the wrong shape, correctly signed
        params = {k: v for k, v in np.load(bad / PARAMS_FILE).items()}
        params["centre.npy" if "centre.npy" in params else "centre"] = np.zeros(3)
        write_params(bad / PARAMS_FILE, {k.removesuffix(".npy"): v for k, v in params.items()})
        from edge.models.signing import sha256_file
        manifest["params_sha256"] = sha256_file(bad / PARAMS_FILE)
        (bad / "manifest.json").write_text(json.dumps(manifest))
        sign_bundle(bad, key, role="site")
        match = "parameter 'centre' has shape \\[3\\]"
    with pytest.raises(want, match=match):
        site["reg"].install(bad, tpl, actor="test")
    assert site["reg"].pointers(tpl.manifest.name) == {}  # nothing installed
    result, error = _results(tmp)[-1]
    assert result == "refused" and str(bad) in error


def test_the_learner_refuses_data_that_cannot_define_normal(site: dict) -> None:
    learner, ts, rows = site["learner"], site["ts"], site["rows"]
    assert learner.learn("p", ts[:ROWS], rows[:, :ROWS]) is None  # not more rows yet
    gappy = rows.copy()
    for lo in range(5, ROWS, 20):  # 5 rows missing in every 20: longer than the hold rule
        gappy[:, lo:lo + 5] = np.nan
    with pytest.raises(Refused, match="complete windows in its first 120 rows"):
        learner.learn("p", ts, gappy)
    shifted = rows.copy()
    shifted[2, 90:] += 5.0  # vibration jumps for the last quarter: two states, not one
    refusing = copy.copy(learner)
    refusing.spec = learner.spec.model_copy(update={"on_verification_failure": "refuse"})
    with pytest.raises(Refused, match="held-back tail: the alert would be active"):
        refusing.learn("p", ts, shifted)


def test_a_failed_verification_installs_flagged_when_the_template_says_flag(
        site: dict) -> None:
    learner, ts, rows, reg, tpl = (site[k] for k in ("learner", "ts", "rows", "reg", "tpl"))
    assert learner.spec.on_verification_failure == "flag"  # the trainer's default
    shifted = rows.copy()
    shifted[2, 90:] += 5.0
    learned = learner.learn("pump-8", ts, shifted)
    assert learned is not None
    ev = learned.evidence
    assert ev["verification"] == "failed" and float(ev["tail_alarm_share"]) > 0.5
    assert str(ev["verification_failure"]).startswith("held-back tail: the alert would be")
    out = learner.package(site["tmp"] / "out8", "pump-8", learned,
                          load_private_key(site["tmp"] / "site.key"))
    reg.install(out, tpl, actor="test")
    reg.install(site["out"], tpl, actor="test")  # pump-7: verified
    metrics = Metrics()
    view = Commissioning(tpl, TemplateScorer(tpl), reg, site["tmp"] / "state", metrics)
    view.poll()
    exposed = generate_latest(metrics.registry).decode()
    assert "forewarn_commissioning_unverified_assets 1.0" in exposed
    assert 'forewarn_commissioning_assets{state="ready"} 2.0' in exposed
    flagged, verified = view.asset("pump-8"), view.asset("pump-7")
    assert flagged["state"] == "ready" and flagged["verified"] is False
    assert flagged["reason"] == ev["verification_failure"]
    assert verified["state"] == "ready" and verified["verified"] is True
    assert verified["reason"] is None and verified["evidence"]["verification"] == "passed"
    assert view.snapshot()["unverified"] == 1


def test_the_learner_signs_as_every_bundle_is_signed_under_the_key_roles(site: dict) -> None:
    """One signature path: format 2 with the role inside, verified by the KeyRing's rules."""
    tmp, tpl, central = site["tmp"], site["tpl"], site["central"]
    doc = json.loads((site["out"] / "SIGNATURE").read_text())
    assert (doc["format"], doc["role"]) == (2, "site")
    assert sorted(doc["files"]) == ["manifest.json", "params.npz"]
    # the site .pub listed among the central keys: a misconfiguration, named
    wrong = SiteParamsRegistry(tmp / "models", [central, tmp / "site.pub"],
                               AuditLog(tmp / "audit.jsonl"))
    with pytest.raises(SignatureError, match=r"signed as a site key but is listed in "
                                             r"bundle\.trusted_keys"):
        wrong.install(site["out"], tpl, actor="test")
    # a site signature claiming the central role
    claim = _copy(site["out"], tmp / "claims-central")
    sign_bundle(claim, load_private_key(tmp / "site.key"), role="central")
    with pytest.raises(SignatureError, match="is a site key: it may sign only site "
                                             "parameters of a centrally signed template"):
        site["reg"].install(claim, tpl, actor="test")
    assert _results(tmp)[-1][0] == "refused"
    # a central key may sign parameters too (the learner asks the ring for the role)
    by_centre = _copy(site["out"], tmp / "by-centre")
    sign_bundle(by_centre, load_private_key(central.with_suffix(".key")), role="central")
    sp = site["reg"].install(by_centre, tpl, actor="test")
    assert sp.signed_by == tpl.signed_by  # the template's central key


def test_the_retired_signature_format_is_refused_by_name(site: dict) -> None:
    """Before the one path, parameters were signed in a domain of their own."""
    tmp = site["tmp"]
    old = _copy(site["out"], tmp / "old")
    doc = json.loads((old / "SIGNATURE").read_text())
    (old / "SIGNATURE").write_text(json.dumps({"alg": "ed25519", "key_id": doc["key_id"],
                                               "role": "site_params",
                                               "signature": doc["signature"]}))
    with pytest.raises(SignatureError, match="retired forewarn-site-params-v1 format"):
        site["reg"].install(old, site["tpl"], actor="test")
    result, error = _results(tmp)[-1]
    assert result == "refused" and "sign them again with forewarn commission" in error


def test_a_new_template_version_gets_new_parameter_versions(site: dict) -> None:
    """The same numbers learned under another template version: another directory, so
    the install does not meet the old set (same asset, same template name)."""
    tpl = site["tpl"]
    other = replace(tpl, manifest=tpl.manifest.model_copy(update={"version": "2"}))
    learned = site["learner"].learn("pump-7", site["ts"], site["rows"])
    assert learned is not None
    out = Learner(other, RULE).package(site["tmp"] / "out2", "pump-7", learned,
                                       load_private_key(site["tmp"] / "site.key"))
    assert out.name != site["out"].name
    assert read_site_params_manifest(out).params_sha256 == \
        read_site_params_manifest(site["out"]).params_sha256  # the same numbers


def test_the_agent_refuses_and_audits_a_set_its_keys_no_longer_trust(site: dict) -> None:
    """The site key's .pub removed from bundle.site_keys: the installed set is refused at
    its next load, the asset learns again, and the refusal is in the audit log."""
    tmp, tpl, central = site["tmp"], site["tpl"], site["central"]
    sp = site["reg"].install(site["out"], tpl, actor="test")
    audit = AuditLog(tmp / "audit.jsonl")
    c = Commissioning(tpl, TemplateScorer(tpl),
                      SiteParamsRegistry(tmp / "models", [central], audit), tmp / "state")
    c.poll()
    a = c.asset("pump-7")
    assert a["state"] == "learning" and "not among the trusted keys" in a["reason"]
    last = json.loads((tmp / "audit.jsonl").read_text().splitlines()[-1])
    assert (last["action"], last["details"]["result"], last["details"]["asset"],
            last["details"]["version"]) == ("model.site_params.activate", "refused",
                                            "pump-7", sp.manifest.version)
    # with the key trusted again it is ready, and a repeated poll audits nothing more
    ok = Commissioning(tpl, TemplateScorer(tpl), site["reg"], tmp / "state")
    ok.poll()
    assert ok.asset("pump-7")["state"] == "ready"
    n = len((tmp / "audit.jsonl").read_text().splitlines())
    c.poll()
    assert len((tmp / "audit.jsonl").read_text().splitlines()) == n


def test_the_registry_keeps_the_learners_sets_out_of_the_templates_versions(
        site: dict, template: tuple[Path, Path]) -> None:
    """Named like its template, a learner's set would become one of its versions."""
    tmp, central = site["tmp"], site["central"]
    reg = Registry(tmp / "registry", [central], audit=AuditLog(tmp / "audit.jsonl"),
                   site_keys=[tmp / "site.pub"])
    reg.install(template[0])
    with pytest.raises(BundleError, match="are named like their template"):
        reg.install(site["out"])
    assert [e.kind for e in reg.list()] == ["template"]
    assert _results(tmp)[-1][0] == "refused"
