"""templates/local's supervised agent, for real: server, Terraform, ``burrow agent
--supervise``, OpenSSH.  No session process outlives its agent or its workspace.

Each test opens an SSH session that leaves processes behind in three ways:

* the session's shell (its process group's leader, until it exits);
* ``sleep 900 &``: a background job in the session's group;
* ``( setsid sleep 901 & )``: a double fork + ``setsid``, out of the group.

Which mechanism catches what:

* SIGKILLed agent, supervisor alive -> the supervisor (a child subreaper) ends
  every descendant: all three;
* workspace stop, supervisor alive -> likewise (the agent's own stop first);
* agent AND supervisor SIGKILLed, then stop -> the template's destroy step ends
  the recorded groups: the shell and its group's jobs; the setsid escapee is
  out of reach (it would take a cgroup), so that test leaves it out.

Every pid learnt is SIGKILLed in ``finally``; the module's server and agents
are killed by pid on teardown (``open_site``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from agent.supervise import CHILD_PID_FILE
from tests.agent.agent_procs import alive
from tests.e2e.e2e_site import Site, open_site

pytestmark = [
    pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed"),
    pytest.mark.timeout(180),
]

LEAVE_BEHIND = ('sleep 900 & echo $! >> pids; '
                '( setsid sleep 901 & echo $! >> pids ); '
                'echo $$ >> pids; exec sleep 902')
IN_GROUP_ONLY = 'sleep 900 & echo $! >> pids; echo $$ >> pids; exec sleep 902'


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with open_site(tmp_path_factory.mktemp("e2e-supervise"), "dev") as s:
        yield s


def wait_for(what: Callable[[], object], timeout: float, label: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {label}")


class Session:
    """One SSH session running ``command`` in dev's home; its pids from ``pids``."""

    def __init__(self, site: Site, command: str, count: int) -> None:
        self.home = site.root("dev") / "home"
        (self.home / "pids").unlink(missing_ok=True)
        self.client = subprocess.Popen(
            ["ssh", "-F", str(site.ssh_config), "-o", "BatchMode=yes", "burrow.dev", command],
            env=site.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        self.pids: list[int] = []

        def read() -> bool:
            try:
                self.pids = [int(x) for x in (self.home / "pids").read_text().split()]
            except (OSError, ValueError):
                return False
            return len(self.pids) == count

        wait_for(read, 30, f"the session's {count} pids")
        assert all(alive(p) for p in self.pids), self.pids

    def close(self) -> None:
        for pid in self.pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.client.poll() is None:
            self.client.kill()
        self.client.wait(10)


def child_pid(site: Site) -> int:
    return int((site.root("dev") / CHILD_PID_FILE).read_text())


def build(site: Site, command: str) -> None:
    site.ok(command, "dev")
    proc = site.cli("logs", "dev", "--follow", timeout=120)
    assert f"{command}: succeeded" in proc.stderr, proc.stderr[-2000:]


def test_sigkilled_agent_is_restarted_connected_and_its_sessions_ended(site: Site) -> None:
    session = Session(site, LEAVE_BEHIND, 3)
    try:
        supervisor = int((site.root("dev") / "agent.pid").read_text())
        old = child_pid(site)
        assert old != supervisor
        assert os.getpgid(old) == supervisor  # the agent runs in the supervisor's group
        before = site.agent("dev")["last_connected_at"]
        killed_at = time.monotonic()
        os.kill(old, signal.SIGKILL)
        new = wait_for(lambda: (p := child_pid_or_none(site)) not in (None, old) and p, 15,
                       "a new agent")
        assert isinstance(new, int)
        assert alive(new)
        # coderd shows it connected, and it serves SSH again
        site.wait_agent("dev", lambda a: a.get("status") == "connected"
                        and (a.get("last_connected_at") or 0) > before, timeout=20)
        proc = site.ssh("burrow.dev", "echo back")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == b"back\n"
        assert time.monotonic() - killed_at < 20
        # none of the dead agent's session processes survives, not even the setsid one
        wait_for(lambda: not any(alive(p) for p in session.pids), 15,
                 f"the dead agent's session processes {session.pids} to end")
        log = (site.root("dev") / "agent.log").read_text()
        assert "agent died (killed by SIGKILL)" in log
    finally:
        session.close()


def child_pid_or_none(site: Site) -> int | None:
    try:
        return child_pid(site)
    except (OSError, ValueError):
        return None


def test_stop_ends_the_supervisor_the_agent_and_every_session_process(site: Site) -> None:
    session = Session(site, LEAVE_BEHIND, 3)
    supervisor = int((site.root("dev") / "agent.pid").read_text())
    agent = child_pid(site)
    try:
        build(site, "stop")
        everything = [supervisor, agent, *session.pids]
        wait_for(lambda: not any(alive(p) for p in everything), 15,
                 f"{everything} to end")
        root = site.root("dev")
        assert not (root / "agent.token").exists()
        assert not (root / "sessions").exists()
    finally:
        session.close()
        build(site, "start")
        site.wait_agent("dev", lambda a: a.get("status") == "connected"
                        and a.get("lifecycle_state") == "ready", timeout=60)


def test_stop_ends_recorded_sessions_when_agent_and_supervisor_were_killed(
        site: Site) -> None:
    session = Session(site, IN_GROUP_ONLY, 2)
    try:
        supervisor = int((site.root("dev") / "agent.pid").read_text())
        agent = child_pid(site)
        os.killpg(supervisor, signal.SIGKILL)  # nothing of burrow runs in the workspace now
        wait_for(lambda: not alive(supervisor) and not alive(agent), 10, "burrow to die")
        time.sleep(0.5)
        assert all(alive(p) for p in session.pids), "sessions outlive a SIGKILLed agent"
        recorded = [p.name for p in (site.root("dev") / "sessions").iterdir()]
        assert str(session.pids[-1]) in recorded  # the shell leads its recorded group
        build(site, "stop")
        wait_for(lambda: not any(alive(p) for p in session.pids), 10,
                 f"{session.pids} to end")
        assert not (site.root("dev") / "sessions").exists()
    finally:
        session.close()
