"""``forewarn-fleet``: the serve command parses, and a bad config is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.errors import ConfigError
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
