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
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.burrow.server_proc import cli_env
from tests.e2e.e2e_site import (
    REPO,
    SCRIPTED,
    Site,
    create_scripted,
    http_get,
    kill_agents,
    sha,
    start_server,
    stop,
)
from tests.netutil import free_port

pytestmark = [
    pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed"),
    pytest.mark.timeout(120),
]



@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("e2e")
    env = cli_env(tmp)
    # reaches the agents through server -> terraform -> local-exec: stats every second
    env["BURROW_REPORT_INTERVAL"] = "1"
    (tmp / "home").mkdir()
    proc, url = start_server(tmp, env)
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
        stop(proc)
        kill_agents(tmp)


@pytest.fixture(scope="module")
def http_in_workspace(site: Site) -> Iterator[int]:
    """An HTTP server in dev's home directory (a process of the workspace's tree)."""
    home = site.root("dev") / "home"
    (home / "hello.txt").write_text("hello from the workspace\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1"], cwd=home, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert http_get(port, "/hello.txt") == b"hello from the workspace\n"
        yield port
    finally:
        stop(proc)


def test_ssh_command_exit_code_env_and_directory(site: Site) -> None:
    proc = site.ssh("burrow.dev", "echo $PWD; echo token=${BURROW_AGENT_TOKEN:-none}; exit 7")
    assert proc.returncode == 7, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines == [str(site.root("dev") / "home"), "token=none"]
    # the token never appears in the agent's (world-readable) argv
    pid = int((site.root("dev") / "agent.pid").read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"agent" in argv
    assert b"--token" not in argv
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
    assert sha(site.root("dev") / "home" / "up.bin") == sha(src)
    down = subprocess.run([*scp, "burrow.dev:up.bin", str(tmp_path / "down.bin")],
                          capture_output=True, timeout=90, check=False, env=site.env,
                          stdin=subprocess.DEVNULL)
    assert down.returncode == 0, down.stderr
    assert sha(tmp_path / "down.bin") == sha(src)
    (site.root("dev") / "home" / "up.bin").unlink()


def test_ssh_local_forward_to_http_in_workspace(site: Site, http_in_workspace: int) -> None:
    local = free_port()
    fwd = subprocess.Popen(
        ["ssh", "-F", str(site.ssh_config), "-o", "BatchMode=yes", "-N", "-o",
         "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{local}:127.0.0.1:{http_in_workspace}",
         "burrow.dev"], env=site.env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert http_get(local, "/hello.txt") == b"hello from the workspace\n"
    finally:
        stop(fwd)


def test_port_forward_concurrent_requests(site: Site, http_in_workspace: int) -> None:
    local = free_port()
    pf = subprocess.Popen(
        [sys.executable, "-m", "burrow.cli", "port-forward", "dev", "--tcp",
         f"{local}:{http_in_workspace}"], env=site.env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert http_get(local, "/hello.txt") == b"hello from the workspace\n"
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: http_get(local, "/hello.txt"), range(16)))
        assert replies == [b"hello from the workspace\n"] * 16
    finally:
        stop(pf, signal.SIGINT)
    assert pf.returncode in (0, 130), pf.stderr.read() if pf.stderr else b""


def test_startup_script_logs_ready_error_and_timeout(site: Site) -> None:
    create_scripted(site, "good", startup_script="echo first line; echo \"in $PWD\" 1>&2; "
                     "echo env=$BURROW_E2E", start_blocks_login="true")
    create_scripted(site, "bad", startup_script="echo about to fail; exit 3")
    create_scripted(site, "hang", startup_script="echo hanging; sleep 600",
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
    # with a session open, the agent's stats carry the tunnel RTT; show prints it
    # next to the tail of the startup log
    held = subprocess.Popen(["ssh", "-F", str(site.ssh_config), "-o", "BatchMode=yes",
                             "burrow.good", "sleep 60"], env=site.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        agent = site.wait_agent("good", lambda a: (a.get("tunnel") or {}).get("rtt_ms_median")
                                is not None, timeout=30)
        assert agent["tunnel"]["sessions"] >= 1
        assert agent["tunnel"]["rtt_ms_max"] >= agent["tunnel"]["rtt_ms_median"] >= 0
        shown = site.ok("show", "good")
    finally:
        stop(held)
    assert "connected, ready" in shown
    assert re.search(r"tunnel  sessions \d+ \(.*\), rtt \d+\.\dms median, \d+\.\dms max",
                     shown), shown
    assert re.search(r"stats   sessions \d+ open/\d+ total, in \d+ B, out \d+ B", shown), shown
    assert "startup log (last 3 lines):" in shown, shown
    assert "      first line\n" in shown, shown
    assert "      env=yes\n" in shown, shown


def listed_agents(site: Site, workspace: str) -> str:
    """The AGENTS column of ``burrow list`` for one workspace."""
    lines = site.ok("list").splitlines()
    header = lines[0]
    start, end = header.index("AGENTS"), header.index("BUILD")
    row = next(line for line in lines[1:] if line.split()[0] == workspace)
    return row[start:end].strip()


def test_agent_killed_disconnects_restarted_connects_and_stops_cleanly(site: Site) -> None:
    create_scripted(site, "victim", shutdown_script="echo bye > shutdown-ran")
    before = site.wait_agent("victim", lambda a: a.get("status") == "connected"
                             and a.get("lifecycle_state") == "ready", timeout=60)
    root = site.root("victim")
    pid = int((root / "agent.pid").read_text())
    environ = dict(
        item.split("=", 1) for item in
        Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in item)
    assert listed_agents(site, "victim") == "connected"
    os.kill(pid, signal.SIGKILL)
    site.wait_agent("victim", lambda a: a.get("status") == "disconnected", timeout=30)
    assert listed_agents(site, "victim") == "disconnected"
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
    create_scripted(site, "wsonly", agent_args="--force-websockets --direct-address=")
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
    assert sha(tmp_path / "b") == sha(src)
    ping = site.cli("ping", "wsonly", "--count", "2", env=forced)
    assert ping.returncode == 0, ping.stderr
    assert "via relay" in ping.stdout, ping.stdout
    log = (site.root("wsonly") / "agent.log").read_text()
    assert "over websocket" in log, log[-2000:]


def test_start_blocks_login_holds_ssh_until_the_script_ends(site: Site) -> None:
    create_scripted(site, "gated", startup_script="sleep 3; echo done > gate-marker",
                    start_blocks_login="true")
    site.wait_agent("gated", lambda a: a.get("status") == "connected"
                    and a.get("lifecycle_state") == "starting", timeout=60)
    site.ok("config-ssh", "--ssh-config-file", str(site.ssh_config))
    proc = site.ssh("burrow.gated", "cat gate-marker")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"done\n"
    assert b"waiting for the workspace's startup script" in proc.stderr
    assert site.agent("gated")["lifecycle_state"] == "ready"


def test_frozen_agent_shows_disconnected_then_reconnects(site: Site) -> None:
    """A stopped (SIGSTOP) agent keeps its TCP connection open: coderd's pings find it."""
    # agent.pid is the supervisor; the agent itself is its child
    pid = int((site.root("dev") / "agent.child.pid").read_text())
    site.wait_agent("dev", lambda a: a.get("status") == "connected")
    os.kill(pid, signal.SIGSTOP)
    try:
        site.wait_agent("dev", lambda a: a.get("status") == "disconnected", timeout=30)
    finally:
        os.kill(pid, signal.SIGCONT)
    site.wait_agent("dev", lambda a: a.get("status") == "connected", timeout=30)
    proc = site.ssh("burrow.dev", "echo thawed")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"thawed\n"
