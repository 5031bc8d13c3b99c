"""The README flow with every part a real process: ``burrow server`` (built-in provisioner,
real Terraform) builds ``templates/local``, whose workspace runs ``burrow agent``; the user
reaches it with OpenSSH through ``burrow config-ssh``'s ProxyCommand, ``burrow ssh``,
``ping``, ``speedtest`` and ``port-forward``.

Skipped until the ``burrow agent`` command is registered in ``burrow/cli.py``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from burrow.cli import COMMANDS
from tests.burrow.access_world import World, _start_server, _stop
from tests.burrow.server_proc import cli_env
from tests.netutil import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif("agent" not in COMMANDS, reason="`burrow agent` is not registered yet"),
    pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed"),
]


@contextlib.contextmanager
def local_workspace(tmp: Path) -> Iterator[World]:
    env = cli_env(tmp)
    (tmp / "home").mkdir(parents=True)
    world = _start_server(tmp, env)
    try:
        world.ok("login", world.url, "--username", "admin", "--password", "password123")
        world.ok("templates", "push", str(ROOT / "templates" / "local"))
        world.ok("create", "dev", "--template", "local", "--var", f"data_dir={tmp / 'ws'}")
        proc = world.cli("logs", "dev", "--follow", timeout=120)
        assert "start: succeeded" in proc.stderr, (proc.stdout[-3000:], proc.stderr[-3000:])
        yield world
    finally:
        _stop(world.proc)
        for pidfile in (tmp / "ws").rglob("agent.pid"):
            with contextlib.suppress(ValueError, OSError):
                os.killpg(int(pidfile.read_text().strip()), signal.SIGKILL)


def _agent_log(tmp: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in (tmp / "ws").rglob("agent.log"))


def test_readme_flow_with_a_real_agent(tmp_path: Path) -> None:
    with local_workspace(tmp_path) as world:
        cfg = tmp_path / "home" / ".ssh" / "config"
        world.ok("config-ssh", "--ssh-config-file", str(cfg))
        ssh = ["ssh", "-F", str(cfg), "-o", "BatchMode=yes"]

        def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False,
                                  env=world.env, stdin=subprocess.DEVNULL)

        proc = run(*ssh, "burrow.dev", "echo from-agent; exit 7")
        assert proc.returncode == 7, (proc.stderr, _agent_log(tmp_path))
        assert proc.stdout == b"from-agent\n"

        blob = os.urandom(8 << 20)
        src = tmp_path / "blob"
        src.write_bytes(blob)
        proc = run("scp", "-F", str(cfg), "-o", "BatchMode=yes", str(src), "burrow.dev:blob")
        assert proc.returncode == 0, proc.stderr
        proc = run(*ssh, "burrow.dev", "sha256sum blob")
        assert proc.stdout.split()[0].decode() == hashlib.sha256(blob).hexdigest()

        proc = run(sys.executable, "-m", "burrow.cli", "ssh", "dev", "--", "exit", "3")
        assert proc.returncode == 3, proc.stderr

        proc = run(sys.executable, "-m", "burrow.cli", "ping", "dev", "-n", "2",
                   "--interval", "0.1")
        assert proc.returncode == 0, proc.stderr
        assert b"pong from dev via " in proc.stdout

        proc = run(sys.executable, "-m", "burrow.cli", "speedtest", "dev", "--size", "4")
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        assert b"download 4 MiB in " in proc.stdout

        proc = subprocess.run([*ssh, "burrow.dev", "wc -c"], input=b"x" * 1000,
                              capture_output=True, timeout=60, check=False,
                              env={**world.env, "BURROW_FORCE_WEBSOCKETS": "1"})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == b"1000"

        _port_forward_to_an_http_server(world, tmp_path)


def _port_forward_to_an_http_server(world: World, tmp: Path) -> None:
    """burrow port-forward to an HTTP server listening on localhost in the workspace."""
    site = tmp / "site"
    site.mkdir()
    for i in range(6):
        (site / f"f{i}.txt").write_text(f"file {i}\n" * 1000)
    http_port, local = free_port(), free_port()
    http = subprocess.Popen([sys.executable, "-m", "http.server", str(http_port), "--bind",
                             "127.0.0.1", "--directory", str(site)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fwd = subprocess.Popen([sys.executable, "-m", "burrow.cli", "port-forward", "dev",
                            "--tcp", f"{local}:{http_port}"], env=world.env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, text=True)
    try:
        assert fwd.stdout is not None
        assert "Forwarding" in fwd.stdout.readline()

        def get(i: int) -> str:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{local}/f{i}.txt",
                                                timeout=10) as resp:
                        return str(resp.read().decode())
                except OSError:
                    if time.monotonic() > deadline:  # http.server may still be starting
                        raise
                    time.sleep(0.1)

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            bodies = list(pool.map(get, range(6)))
        assert bodies == [f"file {i}\n" * 1000 for i in range(6)]
    finally:
        for p in (fwd, http):
            p.send_signal(signal.SIGINT)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
