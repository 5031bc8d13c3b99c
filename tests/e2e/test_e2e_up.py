"""``burrow up`` (the README's run command) on a fresh HOME, twice: the second run reuses."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed"),
    pytest.mark.timeout(120),
]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BURROW_")}
    env.pop("XDG_DATA_HOME", None)
    env.pop("XDG_CONFIG_HOME", None)
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    try:
        yield env
    finally:
        # burrow up detaches the server and the template detaches the agent: stop both by pid
        data = tmp_path / "home" / ".local" / "share" / "burrow"
        for pid_file in [data / "server.pid", *data.glob("workspaces/*/*/agent.pid")]:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)


def _up(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "burrow.cli", "up", "--listen", "127.0.0.1:0"],
                          capture_output=True, text=True, timeout=110, check=False, env=env,
                          stdin=subprocess.DEVNULL)


def test_up_twice_reuses_everything(home: dict[str, str]) -> None:
    data = Path(home["HOME"]) / ".local" / "share" / "burrow"
    first = _up(home)
    assert first.returncode == 0, (first.stdout, first.stderr)
    creds = json.loads((data / "owner.json").read_text())
    assert oct((data / "owner.json").stat().st_mode & 0o777) == "0o600"
    assert f"password: {creds['password']}" in first.stdout
    assert "Started burrow server at " in first.stdout
    assert "Pushed template 'local'" in first.stdout
    assert "Created workspace 'dev'" in first.stdout
    for line in ("    burrow ssh dev", "    burrow config-ssh", "    ssh burrow.dev"):
        assert line in first.stdout.splitlines()
    server_pid = (data / "server.pid").read_text()

    second = _up(home)
    assert second.returncode == 0, (second.stdout, second.stderr)
    assert "already running" in second.stdout
    assert creds["password"] not in second.stdout  # printed once only
    assert "Pushed" not in second.stdout
    assert "Created" not in second.stdout
    assert (data / "server.pid").read_text() == server_pid
    assert "    burrow ssh dev" in second.stdout.splitlines()

    proc = subprocess.run([sys.executable, "-m", "burrow.cli", "ssh", "dev", "--", "echo",
                           "up-ok"], capture_output=True, text=True, timeout=60, check=False,
                          env=home, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "up-ok\n"
