"""Site keys and template bundles on real files, a real registry and the real CLI.

The site key is made by ``forewarn keys generate --site``; templates and full
bundles are signed by a central key; site parameters by the site key. Each
refusal must name the bundle, the key and the reason, and be in the audit log.
"""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.core.audit import AuditLog, verify
from edge.core.errors import BundleError, ConfigError, SignatureError
from edge.models.bundle import load_bundle
from edge.models.registry import Registry
from edge.models.signing import (
    KeyRing,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sha256_file,
    sign_bundle,
    signed_message,
)
from edge.models.sitekey import template_ref
from tests.bundlefactory import make_bundle, make_site_params, make_template

REPO = Path(__file__).resolve().parents[2]
SIGNALS = ["a", "b"]
SITE_RIGHTS = "is a site key: it may sign only site parameters of a centrally signed template"


def forewarn(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


class Site:
    """A state directory with a site key from the CLI, a central key, and a template."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.state.mkdir()
        r = forewarn("keys", "generate", "--site", "--state-dir", self.state)
        assert r.returncode == 0, r.stderr
        self.site_key, self.site_pub = self.state / "keys/site.key", self.state / "keys/site.pub"
        self.site_id = key_id(load_public_key(self.site_pub))
        assert f"key id {self.site_id}" in r.stdout and "bundle.site_keys" in r.stdout
        self.src = tmp / "src"
        self.template, self.central_pub = make_template(self.src)
        self.central_id = key_id(load_public_key(self.central_pub))

    def registry(self, trusted: list[Path] | None = None) -> Registry:
        return Registry(self.state / "models", trusted or [self.central_pub],
                        audit=AuditLog(self.state / "audit.jsonl"), site_keys=[self.site_pub])

    def params(self, **kw: Any) -> Path:
        return make_site_params(self.tmp / "learned", self.template, self.site_key, **kw)

    def audit(self) -> list[dict[str, Any]]:
        lines = (self.state / "audit.jsonl").read_text().splitlines()
        return [json.loads(x) for x in lines]

    def last_refusal(self) -> dict[str, Any]:
        entry = self.audit()[-1]
        assert entry["details"]["result"] == "refused", entry
        details: dict[str, Any] = entry["details"]
        return details


@pytest.fixture()
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def test_site_key_is_private_to_the_state_dir(site: Site) -> None:
    assert stat.S_IMODE(site.site_key.stat().st_mode) == 0o600
    assert stat.S_IMODE((site.state / "keys").stat().st_mode) == 0o700
    again = forewarn("keys", "generate", "--site", "--state-dir", site.state)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_central_template_and_site_params_are_accepted(site: Site) -> None:
    reg = site.registry()
    t = reg.install(site.template, actor="it")
    assert (t.kind, t.signed_by) == ("template", site.central_id)
    params = site.params()
    e = reg.install(params, actor="commissioning")
    assert (e.kind, e.template, e.signed_by) == ("site_params", "tpl/1", site.site_id)
    assert e.params_sha256 == sha256_file(params / "params.npz")
    assert sorted(p.name for p in e.path.iterdir()) == ["INSTALLED.json", "SIGNATURE",
                                                        "manifest.json", "params.npz"]
    sp = reg.load_params("tpl-p1")
    assert sp.template.ident == "tpl/1" and sp.template.signed_by == site.central_id
    with np.load(sp.params_path) as z:
        assert z["centre"].tolist() == [1.0, 2.0]
    # what a learner writes is what the registry checks against
    assert template_ref(reg.load("tpl")) == sp.manifest.template
    with pytest.raises(BundleError, match="site parameters bundle, not a model"):
        reg.load("tpl-p1")
    last = site.audit()[-1]["details"]
    assert last["kind"] == "site_params" and last["template"] == "tpl/1"
    assert last["signed_by"] == site.site_id
    assert verify(site.state / "audit.jsonl").ok
    # the CLI agrees, on the files as installed
    r = forewarn("bundle", "verify", params, "--key", site.central_pub, "--site-key",
                 site.site_pub, "--state-dir", site.state)
    assert r.returncode == 0, r.stderr
    assert f"signed by key {site.site_id}" in r.stdout and "template tpl/1" in r.stdout


def test_tampered_params_are_refused(site: Site) -> None:
    reg = site.registry()
    reg.install(site.template)
    params = site.params()
    with np.load(params / "params.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["centre"] = arrays["centre"] * 0 + 1e6  # an asset whose normal is anything
    np.savez(params / "params.npz", **arrays)  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match=r"signature does not match params\.npz") as exc:
        reg.install(params)
    assert site.site_id in str(exc.value) and str(params) in str(exc.value)
    assert "tpl-p1" not in reg.names()
    refusal = site.last_refusal()
    assert "params.npz" in refusal["error"] and refusal["source"] == str(params)


def test_site_params_without_their_template_are_refused(site: Site) -> None:
    reg = site.registry()
    params = site.params()
    with pytest.raises(BundleError, match=r"template tpl/1 is not present") as exc:
        reg.install(params)
    msg = str(exc.value)
    assert "site parameters tpl-p1/1" in msg and f"signed by key {site.site_id}" in msg
    assert reg.names() == []
    assert "is not present" in site.last_refusal()["error"]


def test_site_params_for_another_template_build_are_refused(site: Site) -> None:
    other, _ = make_template(site.tmp / "other-build", warning=60.0, key_dir=site.src / "keys")
    reg = site.registry()
    reg.install(site.template)
    params = make_site_params(site.tmp / "learned", other, site.site_key)
    with pytest.raises(BundleError, match=r"template tpl/1 has manifest\.json sha256") as exc:
        reg.install(params)
    assert "learned for" in str(exc.value) and site.site_id in str(exc.value)
    assert "manifest.json sha256" in site.last_refusal()["error"]


def test_site_params_whose_template_signer_is_unknown_are_refused(site: Site) -> None:
    reg = site.registry()
    reg.install(site.template)
    # central key rotated: the template's key is no longer trusted on this appliance
    new_pub = site.tmp / "new-central.pub"
    generate_keypair(site.tmp / "new-central.key", new_pub)
    reg2 = site.registry(trusted=[new_pub])
    with pytest.raises(SignatureError, match="is not signed by a central key") as exc:
        reg2.install(site.params())
    assert site.central_id in str(exc.value)  # the template's (now unknown) key is named
    assert "not among the trusted keys" in site.last_refusal()["error"]
    # a template given by hand, signed by a key this appliance never trusted
    stranger, _ = make_template(site.tmp / "stranger", key_dir=site.tmp / "stranger-keys")
    params = make_site_params(site.tmp / "learned2", stranger, site.site_key)
    r = forewarn("bundle", "verify", params, "--key", site.central_pub, "--site-key",
                 site.site_pub, "--template", stranger)
    assert r.returncode == 2 and "is not signed by a central key" in r.stderr, r.stderr


def test_site_params_for_a_full_bundle_are_refused(site: Site) -> None:
    full, _ = make_bundle(site.tmp / "full", signals=SIGNALS, name="tpl", version="1",
                          key_dir=site.src / "keys")
    reg = site.registry()
    reg.install(full)
    with pytest.raises(BundleError, match=r"tpl/1 is kind 'full', not a template"):
        reg.install(make_site_params(site.tmp / "learned", full, site.site_key))


def test_site_params_are_refused_when_the_reference_names_another_key(site: Site) -> None:
    reg = site.registry()
    reg.install(site.template)
    params = site.params(ref={"key_id": "0" * 16})
    with pytest.raises(SignatureError, match=r"parameters name key 0{16}"):
        reg.install(params)


def test_template_signed_by_the_site_key_is_no_template(site: Site) -> None:
    sign_bundle(site.template, load_private_key(site.site_key), role="site")
    params = site.params()
    r = forewarn("bundle", "verify", params, "--key", site.central_pub, "--site-key",
                 site.site_pub, "--template", site.template)
    assert r.returncode == 2 and SITE_RIGHTS in r.stderr, r.stderr
    with pytest.raises(SignatureError, match=SITE_RIGHTS):
        site.registry().install(site.template)


@pytest.mark.parametrize("bundle_kind", ["full", "template"])
def test_site_key_signing_a_model_bundle_is_refused(site: Site, bundle_kind: str) -> None:
    make = make_template if bundle_kind == "template" else make_bundle
    b, _ = make(site.tmp / "evil", signals=SIGNALS, name="m", version="1", warning=1e9,
                key_dir=site.src / "keys")
    sign_bundle(b, load_private_key(site.site_key), role="site")
    with pytest.raises(SignatureError, match=SITE_RIGHTS) as exc:
        site.registry().install(b)
    assert f"key {site.site_id} {SITE_RIGHTS}" in str(exc.value)
    assert f"kind {bundle_kind!r}" in str(exc.value) and str(b) in str(exc.value)
    assert site.site_id in site.last_refusal()["error"]
    # the CLI an operator (or Ansible) uses refuses it the same way
    cfg = site.tmp / "agent.toml"
    cfg.write_text(f'site = "s1"\nstate_dir = "{site.state}"\n[mqtt]\nhost = "127.0.0.1"\n'
                   f'[bundle]\nname = "m"\ntrusted_keys = ["{site.central_pub}"]\n'
                   f'site_keys = ["{site.site_pub}"]\n')
    r = forewarn("model", "install", "--config", cfg, b)
    assert r.returncode == 2 and f"key {site.site_id} {SITE_RIGHTS}" in r.stderr, r.stderr
    assert site.audit()[-1]["details"]["result"] == "refused"
    assert not (site.state / "models/m").exists()


def test_site_key_claiming_the_central_role_is_refused(site: Site) -> None:
    """A hand-made format 1 signature (no role: central) by the site key."""
    b, _ = make_bundle(site.tmp / "evil", signals=SIGNALS, name="m", version="1",
                       key_dir=site.src / "keys")
    key = load_private_key(site.site_key)
    msg = signed_message(sha256_file(b / "manifest.json"), sha256_file(b / "model.onnx"))
    (b / "SIGNATURE").write_text(json.dumps({
        "alg": "ed25519", "key_id": site.site_id,
        "signature": base64.b64encode(key.sign(msg)).decode()}))
    with pytest.raises(SignatureError, match=SITE_RIGHTS):
        load_bundle(b, [site.central_pub], site_keys=[site.site_pub])
    # and an appliance that does not know the site key at all refuses it too
    with pytest.raises(SignatureError, match="not among the trusted keys"):
        load_bundle(b, [site.central_pub])


def test_site_key_listed_as_central_is_reported(site: Site) -> None:
    """The site signer writes role=site into the signed message; an appliance that lists
    the site .pub among its central keys is misconfigured, and says so."""
    site.registry().install(site.template)
    reg = Registry(site.state / "models", [site.central_pub, site.site_pub])
    with pytest.raises(SignatureError, match=r"signed as a site key but is listed in "
                                             r"bundle\.trusted_keys"):
        reg.install(site.params())


def test_a_key_in_both_roles_is_a_config_error(site: Site) -> None:
    with pytest.raises(ConfigError, match=f"key {site.site_id} is listed both"):
        KeyRing.load([site.site_pub], [site.site_pub])


def test_removed_template_refuses_its_installed_params(site: Site) -> None:
    reg = site.registry()
    reg.install(site.template)
    reg.install(site.params(version="1"))
    reg.install(site.params(version="2"))
    tdir = site.state / "models/tpl/1"
    tdir.chmod(0o755)
    for f in tdir.iterdir():
        f.chmod(0o644)
        f.unlink()
    tdir.rmdir()
    with pytest.raises(BundleError, match="template tpl/1 is not present"):
        reg.load_params("tpl-p1")
    with pytest.raises(BundleError, match="template tpl/1 is not present"):
        reg.promote("tpl-p1", "2", actor="alice")
    assert reg.pointers("tpl-p1").active == "1"
    refusal = site.audit()[-1]
    assert refusal["action"] == "model.promote" and refusal["actor"] == "alice"
    assert "is not present" in refusal["details"]["error"]


def test_site_params_carry_no_graph(site: Site) -> None:
    reg = site.registry()
    reg.install(site.template)
    params = site.params()
    (params / "model.onnx").write_bytes((site.template / "model.onnx").read_bytes())
    sign_bundle(params, load_private_key(site.site_key), role="site")
    with pytest.raises(BundleError, match=r"carries no model\.onnx"):
        reg.install(params)


def test_central_full_bundles_keep_the_format_agents_before_roles_verify(site: Site) -> None:
    """Format 1 for a central key and a graph payload: the old verifier's message."""
    doc = json.loads((site.template / "SIGNATURE").read_text())
    assert (doc["format"], doc["role"]) == (1, "central")
    pub = load_public_key(site.central_pub)
    msg = signed_message(sha256_file(site.template / "manifest.json"),
                         sha256_file(site.template / "model.onnx"))
    pub.verify(base64.b64decode(doc["signature"]), msg)  # raises if not
    # an old SIGNATURE (alg, key_id, signature only) still loads
    (site.template / "SIGNATURE").write_text(json.dumps(
        {k: doc[k] for k in ("alg", "key_id", "signature")}))
    assert load_bundle(site.template, [site.central_pub]).signed_by == site.central_id


def test_params_file_slipped_into_a_full_bundle_is_refused(site: Site) -> None:
    (site.template / "params.npz").write_bytes(b"PK\x05\x06" + bytes(18))
    with pytest.raises(SignatureError, match=r"covers manifest\.json and model\.onnx only"):
        site.registry().install(site.template)
    assert not (site.state / "models/tpl").exists()
