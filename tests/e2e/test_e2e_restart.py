"""coderd and its embedded relay restart under a running transfer: the REAL agent rides it out.

Its own ``burrow server`` (the test stops and restarts it on the same
address).  The workspace's agent advertises no direct path, so the bytes go
through the embedded relay that goes away: the tunnel retransmits, the
agent's DerpClient redials, its coordinator connection comes back.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.burrow.server_proc import cli_env
from tests.e2e.e2e_site import SCRIPTED, Site, kill_agents, start_server, stop

pytestmark = [
    pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed"),
    pytest.mark.timeout(120),
]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    env = cli_env(tmp_path)
    (tmp_path / "home").mkdir()
    proc, url = start_server(tmp_path, env)
    s = Site(proc, url, env, tmp_path, tmp_path / "home" / ".ssh" / "config")
    try:
        yield s
    finally:
        stop(s.proc)
        kill_agents(tmp_path)


def test_upload_survives_server_and_relay_restart(site: Site, tmp_path: Path) -> None:
    site.ok("login", site.url, "--username", "admin", "--password", "password123")
    site.ok("templates", "push", str(SCRIPTED), "--name", "scripted")
    site.ok("create", "dev", "--template", "scripted", "--var",
            f"data_dir={tmp_path / 'workspaces'}", "--var", "agent_args=--direct-address=")
    site.wait_agent("dev", lambda a: a.get("status") == "connected"
                    and a.get("lifecycle_state") == "ready", timeout=60)
    site.ok("config-ssh", "--ssh-config-file", str(site.ssh_config))
    blob = os.urandom(24 << 20)
    src = tmp_path / "up.bin"
    src.write_bytes(blob)
    # -l: 64 Mbit/s, so the 24 MiB upload lasts ~3 s and the restart lands in the middle
    scp = subprocess.Popen(
        ["scp", "-F", str(site.ssh_config), "-o", "BatchMode=yes", "-l", "64000", str(src),
         "burrow.dev:up.bin"], env=site.env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        target = site.root("dev") / "home" / "up.bin"
        deadline = time.monotonic() + 30
        while (not target.exists() or target.stat().st_size < (2 << 20)) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert target.exists(), "the upload never started"
        stop(site.proc)  # coderd, the coordinator and the embedded relay go away
        assert target.stat().st_size < len(blob), "the upload ended before the restart"
        time.sleep(0.5)
        site.proc, url = start_server(site.tmp, site.env, listen=site.url.split("//", 1)[1])
        assert url == site.url
        _, err = scp.communicate(timeout=90)
    finally:
        if scp.poll() is None:
            scp.kill()
            scp.wait(10)
    assert scp.returncode == 0, err
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(blob).digest()
    # the agent's coordinator connection came back: coderd shows it connected, new sessions work
    site.wait_agent("dev", lambda a: a.get("status") == "connected", timeout=60)
    proc = site.ssh("burrow.dev", "echo after restart")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"after restart\n"
