"""The whole product on loopback: real server, real Terraform, REAL ``burrow agent``, REAL OpenSSH.

One ``burrow server`` (temp data dir, port 0, embedded relay, built-in
provisioners) serves the module.  Workspaces are built by Terraform from
``templates/local`` (``dev``) and from ``tests/e2e/templates/scripted`` (the
same process tree with the agent options as variables), so each one runs the
real ``burrow agent`` process.  Clients are the real OpenSSH ``ssh``/``scp``
through ``burrow config-ssh``'s ProxyCommand, and ``burrow port-forward``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTED = Path(__file__).resolve().parent / "templates" / "scripted"

pytestmark = [
    pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed"),
    pytest.mark.timeout(120),
]


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


def _start_server(tmp: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    log = open(tmp / "server.log", "w")  # noqa: SIM115 -- the server writes it until stopped
    proc = subprocess.Popen(
        [sys.executable, "-m", "burrow.cli", "server", "--listen", "127.0.0.1:0",
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


def _stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _kill_agents(tmp: Path) -> None:
    """The workspaces' agents are detached (setsid): stop them by their pid files."""
    for pid_file in (tmp / "workspaces").glob("*/*/agent.pid"):
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("e2e")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BURROW_")}
    env["BURROW_CONFIG_DIR"] = str(tmp / "config")
    env["HOME"] = str(tmp / "home")
    (tmp / "home").mkdir()
    proc, url = _start_server(tmp, env)
    s = Site(proc, url, env, tmp, tmp / "home" / ".ssh" / "config")
    try:
        s.ok("login", url, "--username", "admin", "--password", "password123")
        s.ok("templates", "push", str(REPO / "templates" / "local"), "--name", "local")
        s.ok("templates", "push", str(SCRIPTED), "--name", "scripted")
        s.ok("create", "dev", "--template", "local", "--var",
             f"data_dir={tmp / 'workspaces'}")
        s.wait_agent("dev", lambda a: a.get("status") == "connected"
                     and a.get("lifecycle_state") == "ready", timeout=60)
        s.ok("config-ssh", "--ssh-config-file", str(s.ssh_config))
        yield s
    finally:
        _stop(proc)
        _kill_agents(tmp)


def _create_scripted(site: Site, name: str, **variables: str) -> None:
    args = ["create", name, "--template", "scripted", "--var",
            f"data_dir={site.tmp / 'workspaces'}"]
    for k, v in variables.items():
        args += ["--var", f"{k}={v}"]
    site.ok(*args)


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_get(port: int, path: str, timeout: float = 20) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return bytes(r.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module")
def http_in_workspace(site: Site) -> Iterator[int]:
    """An HTTP server in dev's home directory (a process of the workspace's tree)."""
    home = site.root("dev") / "home"
    (home / "hello.txt").write_text("hello from the workspace\n")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1"], cwd=home, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert _http_get(port, "/hello.txt") == b"hello from the workspace\n"
        yield port
    finally:
        _stop(proc)


def test_ssh_command_exit_code_env_and_directory(site: Site) -> None:
    proc = site.ssh("burrow.dev", "echo $PWD; echo token=${BURROW_AGENT_TOKEN:-none}; exit 7")
    assert proc.returncode == 7, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines == [str(site.root("dev") / "home"), "token=none"]
    # the agent's lifecycle and connection as coderd shows them
    shown = site.ok("show", "dev")
    assert "connected, ready" in shown


def test_scp_50_mib_both_ways(site: Site, tmp_path: Path) -> None:
    src = tmp_path / "up.bin"
    with open(src, "wb") as f:
        for _ in range(50):
            f.write(os.urandom(1 << 20))
    scp = ["scp", "-F", str(site.ssh_config), "-o", "BatchMode=yes"]
    up = subprocess.run([*scp, str(src), "burrow.dev:up.bin"], capture_output=True,
                        timeout=90, check=False, env=site.env, stdin=subprocess.DEVNULL)
    assert up.returncode == 0, up.stderr
    assert _sha(site.root("dev") / "home" / "up.bin") == _sha(src)
    down = subprocess.run([*scp, "burrow.dev:up.bin", str(tmp_path / "down.bin")],
                          capture_output=True, timeout=90, check=False, env=site.env,
                          stdin=subprocess.DEVNULL)
    assert down.returncode == 0, down.stderr
    assert _sha(tmp_path / "down.bin") == _sha(src)
    (site.root("dev") / "home" / "up.bin").unlink()


def test_ssh_local_forward_to_http_in_workspace(site: Site, http_in_workspace: int) -> None:
    local = _free_port()
    fwd = subprocess.Popen(
        ["ssh", "-F", str(site.ssh_config), "-o", "BatchMode=yes", "-N", "-o",
         "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{local}:127.0.0.1:{http_in_workspace}",
         "burrow.dev"], env=site.env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert _http_get(local, "/hello.txt") == b"hello from the workspace\n"
    finally:
        _stop(fwd)


def test_port_forward_concurrent_requests(site: Site, http_in_workspace: int) -> None:
    local = _free_port()
    pf = subprocess.Popen(
        [sys.executable, "-m", "burrow.cli", "port-forward", "dev", "--tcp",
         f"{local}:{http_in_workspace}"], env=site.env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _http_get(local, "/hello.txt") == b"hello from the workspace\n"
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: _http_get(local, "/hello.txt"), range(16)))
        assert replies == [b"hello from the workspace\n"] * 16
    finally:
        _stop(pf, signal.SIGINT)
    assert pf.returncode in (0, 130), pf.stderr.read() if pf.stderr else b""


def test_startup_script_logs_ready_error_and_timeout(site: Site) -> None:
    _create_scripted(site, "good", startup_script="echo first line; echo \"in $PWD\" 1>&2; "
                     "echo env=$BURROW_E2E", start_blocks_login="true")
    _create_scripted(site, "bad", startup_script="echo about to fail; exit 3")
    _create_scripted(site, "hang", startup_script="echo hanging; sleep 600",
                     startup_script_timeout="2")
    good = site.wait_agent("good", lambda a: a.get("lifecycle_state") == "ready", timeout=60)
    logs = site.api(f"/workspaceagents/{good['id']}/logs")["logs"]
    texts = [x["text"] for x in logs]
    assert texts == ["first line", f"in {site.root('good') / 'home'}", "env=yes"], texts
    assert all(x["source"] == "startup_script" for x in logs)
    assert good["lifecycle_changed_at"] > 0
    bad = site.wait_agent("bad", lambda a: a.get("lifecycle_state") == "start_error",
                          timeout=60)
    assert [x["text"] for x in site.api(f"/workspaceagents/{bad['id']}/logs")["logs"]] == [
        "about to fail"]
    hang = site.wait_agent("hang", lambda a: a.get("lifecycle_state") == "start_timeout",
                           timeout=60)
    assert "hanging" in [x["text"] for x in site.api(f"/workspaceagents/{hang['id']}/logs")[
        "logs"]]
    # a failed start is a warning for ssh, not a failure
    proc = site.cli("ssh", "bad", "--", "echo", "still reachable", env={})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "still reachable\n"
    # the login gate is open once the script finished
    site.ok("config-ssh", "--ssh-config-file", str(site.ssh_config))
    proc2 = site.ssh("burrow.good", "echo $BURROW_E2E")
    assert proc2.returncode == 0, proc2.stderr
    assert proc2.stdout == b"yes\n"


def test_agent_killed_disconnects_restarted_connects_and_stops_cleanly(site: Site) -> None:
    _create_scripted(site, "victim", shutdown_script="echo bye > shutdown-ran")
    before = site.wait_agent("victim", lambda a: a.get("status") == "connected"
                             and a.get("lifecycle_state") == "ready", timeout=60)
    root = site.root("victim")
    pid = int((root / "agent.pid").read_text())
    environ = dict(
        item.split("=", 1) for item in
        Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in item)
    os.kill(pid, signal.SIGKILL)
    site.wait_agent("victim", lambda a: a.get("status") == "disconnected", timeout=30)
    env = {k: v for k, v in site.env.items()}
    env.update(HOME=str(root / "home"), BURROW_AGENT_URL=environ["BURROW_AGENT_URL"],
               BURROW_AGENT_TOKEN=environ["BURROW_AGENT_TOKEN"])
    agent = subprocess.Popen([sys.executable, "-m", "burrow.cli", "agent"], cwd=root / "home",
                             env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        after = site.wait_agent("victim", lambda a: a.get("status") == "connected"
                                and a.get("lifecycle_state") == "ready"
                                and a.get("lifecycle_changed_at", 0) >
                                before["lifecycle_changed_at"], timeout=30)
        assert after["id"] == before["id"]
        site.ok("config-ssh", "--ssh-config-file", str(site.ssh_config))
        proc = site.ssh("burrow.victim", "echo back")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == b"back\n"
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err[-2000:]
    assert b"Traceback" not in err
    assert (root / "home" / "shutdown-ran").read_text() == "bye\n"
    site.wait_agent("victim", lambda a: a.get("lifecycle_state") == "off"
                    and a.get("status") == "disconnected", timeout=15)


def test_whole_flow_with_websockets_forced(site: Site, tmp_path: Path) -> None:
    _create_scripted(site, "wsonly", agent_args="--force-websockets --direct-address=")
    site.wait_agent("wsonly", lambda a: a.get("status") == "connected"
                    and a.get("lifecycle_state") == "ready", timeout=60)
    site.ok("config-ssh", "--ssh-config-file", str(site.ssh_config))
    forced = {"BURROW_FORCE_WEBSOCKETS": "1"}
    proc = site.ssh("burrow.wsonly", "echo over ws; exit 5", env=forced)
    assert proc.returncode == 5, proc.stderr
    assert proc.stdout == b"over ws\n"
    src = tmp_path / "blob"
    src.write_bytes(os.urandom(8 << 20))
    scp = ["scp", "-F", str(site.ssh_config), "-o", "BatchMode=yes"]
    for args in ([str(src), "burrow.wsonly:blob"], ["burrow.wsonly:blob", str(tmp_path / "b")]):
        r = subprocess.run([*scp, *args], capture_output=True, timeout=60, check=False,
                           env={**site.env, **forced}, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
    assert _sha(tmp_path / "b") == _sha(src)
    ping = site.cli("ping", "wsonly", "--count", "2", env=forced)
    assert ping.returncode == 0, ping.stderr
    assert "via relay" in ping.stdout, ping.stdout
    log = (site.root("wsonly") / "agent.log").read_text()
    assert "over websocket" in log, log[-2000:]
