"""``forewarn-fleet``: the serve command parses, and a bad config is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.core.errors import ConfigError
from fleet.cli import main
from fleet.config import parse_config


def test_bad_config_names_the_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    cfg = tmp_path / "fleet.toml"
    cfg.write_text('enrolment = "/nonexistent"\n[broker]\nhost = "h"\nport = 0\n')
    assert main(["serve", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "fleet.toml" in err and "broker.port" in err


def test_auth_is_on_by_default() -> None:
    with pytest.raises(ConfigError, match="tokens_file is required"):
        parse_config({"enrolment": "/x", "broker": {"host": "h"}})
    assert parse_config({"enrolment": "/x", "broker": {"host": "h"},
                         "api": {"read_open": True}}).api.read_open


def test_enrolment_is_reloaded_and_a_bad_file_keeps_the_old_set(tmp_path: Path) -> None:
    import os

    from edge.egress.envelope import PUB_FILE, load_or_create_key
    from fleet.enrol import Enrolment

    d = tmp_path / "sites"
    d.mkdir()
    load_or_create_key(tmp_path / "a")
    (d / "s-01.pub").write_bytes((tmp_path / "a" / PUB_FILE).read_bytes())
    e = Enrolment(d)
    assert list(e.keys()) == ["s-01"]
    (d / "s-02.pub").write_bytes((tmp_path / "a" / PUB_FILE).read_bytes())
    os.utime(d, (1e9, 1e9))  # the mtime moved (coarse timestamps could hide it)
    assert sorted(e.keys()) == ["s-01", "s-02"]
    (d / "bad name.pub").write_text("x")
    os.utime(d, (2e9, 2e9))
    assert sorted(e.keys()) == ["s-01", "s-02"]  # refused file: the old set stays
