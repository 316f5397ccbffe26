"""The Host allow-list and the loopback rule: pure parsing, no server."""

from __future__ import annotations

import pytest

from edge.api.limits import RequestLimits, default_hosts, host_name
from edge.core.config import is_loopback


@pytest.mark.parametrize(("header", "name"), [
    ("127.0.0.1:8080", "127.0.0.1"), ("[::1]:8080", "::1"), ("[::1]", "::1"),
    ("GW-Line1.Plant.Example.:8080", "gw-line1.plant.example"), ("localhost", "localhost"),
    ("evil.example:notaport", "evil.example:notaport"),
])
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


def test_allow_list() -> None:
    lim = RequestLimits(allowed_hosts=default_hosts("10.0.0.5", ["gw-line1.plant.example"]))
    for ok in ("localhost:8080", "10.0.0.5:8080", "gw-line1.plant.example", "192.0.2.7",
               "[fe80::1]:8080", None):
        assert lim.host_ok(ok), ok
    for bad in ("rebind.attacker.example", "gw-line1.plant.example.attacker.example",
                "10.0.0.5.nip.io", ""):
        assert not lim.host_ok(bad), bad
    assert RequestLimits(allowed_hosts=frozenset({"*"})).host_ok("anything.example")


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False),
    ("gw-line1", False), ("localhost.attacker.example", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
