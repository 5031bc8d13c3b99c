"""burrow.portspec: --tcp values."""

from __future__ import annotations

import pytest

from burrow.portspec import Forward, PortSpecError, parse, parse_all


@pytest.mark.parametrize(("spec", "want"), [
    ("8080", [Forward("127.0.0.1", 8080, 8080)]),
    ("8080:80", [Forward("127.0.0.1", 8080, 80)]),
    ("127.0.0.1:8080:80", [Forward("127.0.0.1", 8080, 80)]),
    ("0.0.0.0:1:65535", [Forward("0.0.0.0", 1, 65535)]),
    ("localhost:8080:80", [Forward("127.0.0.1", 8080, 80)]),
    ("[::1]:8080:80", [Forward("::1", 8080, 80)]),
    ("9000-9002", [Forward("127.0.0.1", p, p) for p in (9000, 9001, 9002)]),
    ("9000-9002:7000-7002", [Forward("127.0.0.1", 9000 + i, 7000 + i) for i in range(3)]),
    ("5-5", [Forward("127.0.0.1", 5, 5)]),
])
def test_valid_specs(spec: str, want: list[Forward]) -> None:
    assert parse(spec) == want


def test_service_name() -> None:
    assert parse("8080:80")[0].service == "tcp:80"


@pytest.mark.parametrize(("spec", "says"), [
    ("", "needs a value"),
    ("80:", "expected"),
    (":80", "expected"),
    ("a:b", "not a port"),
    ("0", "out of range"),
    ("65536", "out of range"),
    ("123456", "not a port"),
    ("+80", "not a port"),
    ("\uff19\uff10", "not a port"),
    ("9002-9000", "backwards"),
    ("9000-9002:80", "local range has 3 ports, remote range 1"),
    ("1-2000", "more than"),
    ("1:2:3:4", "expected"),
    ("example.com:80:80", "must be an IP address"),
    ("::1:80:80", "expected"),
    ("[::1:80:80", "expected [address]"),
    ("[nope]:80:80", "must be an IP address"),
])
def test_bad_specs_say_why(spec: str, says: str) -> None:
    with pytest.raises(PortSpecError) as info:
        parse(spec)
    assert says in str(info.value)
    assert "\n" not in str(info.value)


def test_parse_all_refuses_duplicate_local_ports() -> None:
    assert len(parse_all(["8080:80", "9000-9002", "127.0.0.2:8080:80"])) == 5
    with pytest.raises(PortSpecError, match="already used"):
        parse_all(["8080:80", "8079-8081"])
