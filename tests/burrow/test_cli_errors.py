"""User mistakes on the command line end in one line on stderr, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# A directory that cannot be created: /proc does not allow new entries.
UNCREATABLE = "/proc/burrow-test/nope"


def burrow(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "BURROW_CONFIG_DIR": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }
    return subprocess.run(
        [sys.executable, "-m", "burrow.cli", *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            ["provisionerd", "start", "--url", "http://127.0.0.1:1", "--psk", "x",
             "--workdir", UNCREATABLE],
            1,
            f"burrow provisionerd: cannot create --workdir {UNCREATABLE}",
        ),
        (["up", "--data-dir", UNCREATABLE], 1,
         f"burrow up: cannot create data directory {UNCREATABLE}"),
        (["server", "--data-dir", "DATA", "--listen", "127.0.0.1:0", "--tls-cert", "/nonexistent",
          "--tls-key", "/nonexistent"], 2, "burrow server: cannot load --tls-cert/--tls-key"),
        (["port-forward", "x", "--tcp", "abc"], 2, "burrow port-forward: --tcp 'abc'"),
        (["login", "not-a-url"], 2, "burrow login: not an http(s) URL"),
        (["relay", "--mesh-key-file", "/nonexistent"], 2,
         "burrow relay: cannot read mesh key file /nonexistent"),
        (["templates", "push", "/nonexistent"], 2, "burrow templates: not a directory"),
        (["create", "ws", "--template", "t"], 1, "burrow create: not logged in"),
    ],
)
def test_user_mistake_is_one_line_and_an_exit_code(
    tmp_path: Path, argv: list[str], code: int, message: str
) -> None:
    argv = [str(tmp_path / "data") if a == "DATA" else a for a in argv]
    result = burrow(tmp_path, *argv)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(message), lines[0]


def test_relay_on_a_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        listen = f"127.0.0.1:{busy.getsockname()[1]}"
        result = burrow(tmp_path, "relay", "--listen", listen, "--log-level", "warning")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"burrow relay: cannot listen on {listen}: address already in use")


def test_server_on_a_busy_port_ends_in_one_error_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        listen = f"127.0.0.1:{busy.getsockname()[1]}"
        result = burrow(tmp_path, "server", "--listen", listen, "--provisioner-daemons", "0",
                        "--data-dir", str(tmp_path / "data"))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("burrow server:")]
    assert errors == [
        f"burrow server: cannot listen on {listen}: address already in use: another process "
        "listens there; stop it or choose another --listen"
    ], result.stderr
