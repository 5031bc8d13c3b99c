"""Helpers for the end-to-end tests (not a test module): a real ``burrow server`` and
its workspaces, each running the real ``burrow agent``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.burrow.server_proc import cli_env

REPO = Path(__file__).resolve().parents[2]
SCRIPTED = Path(__file__).resolve().parent / "templates" / "scripted"

@dataclass
class Site:
    proc: subprocess.Popen[str]
    url: str
    env: dict[str, str]
    tmp: Path
    ssh_config: Path

    def cli(self, *args: str, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "burrow.cli", *args], capture_output=True, text=True,
            timeout=timeout, check=False, env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
        )

    def ok(self, *args: str, timeout: float = 60) -> str:
        proc = self.cli(*args, timeout=timeout)
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
        return proc.stdout

    def api(self, path: str) -> Any:
        session = json.loads((Path(self.env["BURROW_CONFIG_DIR"]) / "session.json").read_text())
        req = urllib.request.Request(self.url + "/api/v2" + path,
                                     headers={"Burrow-Session-Token": session["token"]})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def agent(self, ws: str) -> dict[str, Any]:
        agents = (self.api(f"/workspaces/{ws}")["latest_build"] or {}).get("agents") or []
        return dict(agents[0]) if agents else {}

    def root(self, ws: str) -> Path:
        return self.tmp / "workspaces" / "admin" / ws

    def wait_agent(self, ws: str, ok: Callable[[dict[str, Any]], bool],
                   timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        agent: dict[str, Any] = {}
        while time.monotonic() < deadline:
            agent = self.agent(ws)
            if agent and ok(agent):
                return agent
            time.sleep(0.2)
        log = self.root(ws) / "agent.log"
        raise AssertionError(f"{ws}: agent never matched: {agent}\n"
                             f"{log.read_text()[-3000:] if log.exists() else 'no log'}")

    def ssh(self, *args: str, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", *args],
            capture_output=True, timeout=timeout, check=False, env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
        )


def start_server(tmp: Path, env: dict[str, str],
                  listen: str = "127.0.0.1:0") -> tuple[subprocess.Popen[str], str]:
    log = open(tmp / "server.log", "a")  # noqa: SIM115 -- the server writes it until stopped
    proc = subprocess.Popen(
        [sys.executable, "-m", "burrow.cli", "server", "--listen", listen,
         "--data-dir", str(tmp / "data"), "--provisioner-daemons", "3"],
        stdout=subprocess.PIPE, stderr=log, text=True, env=env,
    )
    log.close()
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "burrow server listening on URL" (or EOF on failure)
    if "listening on " not in line:
        proc.kill()
        proc.wait(10)
        raise RuntimeError(f"burrow server did not start: {(tmp / 'server.log').read_text()}")
    return proc, line.strip().rsplit(" ", 1)[1]


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def kill_agents(tmp: Path) -> None:
    """The workspaces' agents are detached (setsid): stop them by their pid files.

    agent.pid is the group leader (the supervisor under templates/local, with
    the agent in its group); the session groups the agents recorded go too.
    """
    from agent import procgroups

    for pid_file in (tmp / "workspaces").glob("*/*/agent.pid"):
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            continue
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    for sessions in (tmp / "workspaces").glob("*/*/sessions"):
        procgroups.send([t for _, t in procgroups.recorded(sessions)], signal.SIGKILL)


@contextlib.contextmanager
def open_site(tmp: Path, *workspaces: str) -> Iterator[Site]:
    """A logged-in server with templates ``local`` and ``scripted`` pushed and a
    ``local`` workspace per name in ``workspaces``, its agent connected and ready."""
    env = cli_env(tmp)
    (tmp / "home").mkdir()
    proc, url = start_server(tmp, env)
    s = Site(proc, url, env, tmp, tmp / "home" / ".ssh" / "config")
    try:
        s.ok("login", url, "--username", "admin", "--password", "password123")
        s.ok("templates", "push", str(REPO / "templates" / "local"), "--name", "local")
        s.ok("templates", "push", str(SCRIPTED), "--name", "scripted")
        for name in workspaces:
            s.ok("create", name, "--template", "local", "--var", f"data_dir={tmp / 'workspaces'}")
        for name in workspaces:
            s.wait_agent(name, lambda a: a.get("status") == "connected"
                         and a.get("lifecycle_state") == "ready", timeout=60)
        s.ok("config-ssh", "--ssh-config-file", str(s.ssh_config))
        yield s
    finally:
        stop(proc)
        kill_agents(tmp)


def create_scripted(site: Site, name: str, **variables: str) -> None:
    args = ["create", name, "--template", "scripted", "--var",
            f"data_dir={site.tmp / 'workspaces'}"]
    for k, v in variables.items():
        args += ["--var", f"{k}={v}"]
    site.ok(*args)


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def http_get(port: int, path: str, timeout: float = 20) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return bytes(r.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
