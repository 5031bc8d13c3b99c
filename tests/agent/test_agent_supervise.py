"""The supervisor (agent/supervise.py) with a stand-in agent (tests/agent/supervised.py).

Each test starts a real supervisor process (in its own session, as the
template does) whose agent records a session group and starts an escapee
that left its group (double fork + setsid).  Every pid learnt is SIGKILLed in
``finally`` if still alive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.procgroups import Groups
from agent.supervise import CHILD_PID_FILE, RestartBudget, RestartPolicy
from tests.agent.agent_procs import alive

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


def wait_for(what: Callable[[], object], timeout: float = 10, label: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {label or what}")


class Run:
    def __init__(self, tmp: Path, mode: str = "run", **config: object) -> None:
        self.dir = tmp
        self.pids: set[int] = set()
        argv = [sys.executable, "-m", "tests.agent.supervised", "agent", str(tmp), mode]
        cfg = {"argv": argv, "run_dir": str(tmp), **config}
        self.log = open(tmp / "supervisor.log", "w")  # noqa: SIM115 -- closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.agent.supervised", "supervise", json.dumps(cfg)],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            start_new_session=True)
        self.pids.add(self.proc.pid)

    def agent(self, other_than: int = 0) -> list[int]:
        """The current agent's pids (agent session background escapee) once it is up."""
        def current() -> list[int] | None:
            try:
                pid = int((self.dir / CHILD_PID_FILE).read_text())
                if pid == other_than:
                    return None
                pids = [int(x) for x in (self.dir / f"pids.{pid}").read_text().split()]
            except (OSError, ValueError):
                return None
            return pids

        pids = wait_for(current, label=f"an agent other than {other_than}: {self.text()}")
        assert isinstance(pids, list)
        self.pids.update(pids)
        return pids

    def text(self) -> str:
        self.log.flush()
        return (self.dir / "supervisor.log").read_text()

    def close(self) -> None:
        for pid in self.pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def start(mode: str = "run", **config: object) -> Run:
        runs.append(Run(tmp_path, mode, **config))
        return runs[-1]

    try:
        yield start
    finally:
        for r in runs:
            r.close()


def all_dead(pids: list[int]) -> bool:
    return not any(alive(p) for p in pids)


def test_sigkilled_agent_is_restarted_and_its_sessions_ended(run: Callable[..., Run]) -> None:
    r = run(grace=1.0)
    first = r.agent()
    assert all(alive(p) for p in first)
    assert (r.dir / "sessions" / str(first[1])).exists()
    os.kill(first[0], signal.SIGKILL)
    second = r.agent(other_than=first[0])
    assert alive(second[0])
    # the dead agent's session group AND the escapee that left it (subreaper sweep)
    wait_for(lambda: all_dead(first), timeout=5, label=f"{first} to die: {r.text()}")
    assert not (r.dir / "sessions" / str(first[1])).exists()
    assert "agent died (killed by SIGKILL)" in r.text()
    # stop: the agent, its sessions and the supervisor end
    r.proc.send_signal(signal.SIGTERM)
    assert r.proc.wait(15) == 0, r.text()
    assert all_dead(second), r.text()
    assert not (r.dir / CHILD_PID_FILE).exists()
    assert not [p for p in (r.dir / "sessions").iterdir() if p.name.isdigit()]


def test_groups_an_earlier_agent_left_recorded_are_ended_at_start(
        tmp_path: Path, run: Callable[..., Run]) -> None:
    leftover = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        groups = Groups()
        groups.record_in(tmp_path / "sessions")
        groups.add(leftover.pid)
        r = run()
        r.agent()
        assert leftover.wait(10) == -signal.SIGHUP
        assert not (tmp_path / "sessions" / str(leftover.pid)).exists()
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait(10)


def test_supervisor_killed_stops_the_agent_by_parent_death_signal(
        run: Callable[..., Run]) -> None:
    r = run()
    pids = r.agent()
    r.proc.kill()
    r.proc.wait(10)
    # PR_SET_PDEATHSIG: the agent gets SIGTERM (the stand-in exits 0 on it)
    wait_for(lambda: not alive(pids[0]), timeout=10, label="the orphaned agent to stop")


def test_gives_up_after_too_many_deaths(run: Callable[..., Run]) -> None:
    r = run("exit3", policy={"max_restarts": 2, "first_delay": 0.05})
    assert r.proc.wait(20) == 1, r.text()
    log = r.text()
    assert log.count("agent started") == 3, log
    assert "agent died 3 times within 60 s (last: exit status 3): giving up" in log


def test_agent_exiting_zero_is_not_restarted(run: Callable[..., Run]) -> None:
    r = run("exit0")
    assert r.proc.wait(20) == 0, r.text()
    assert r.text().count("agent started") == 1
    assert "agent exited on its own (exit status 0): not restarting" in r.text()


def test_restart_budget_backs_off_and_gives_up() -> None:
    budget = RestartBudget(RestartPolicy(max_restarts=3, window=60, first_delay=0.5,
                                         max_delay=2, stable_after=30))
    assert [budget.on_death(t, 1) for t in (0, 1, 2)] == [0.5, 1.0, 2.0]
    assert budget.on_death(3, 1) is None  # a fourth death within the minute
    later = RestartBudget(RestartPolicy(max_restarts=3, window=60, first_delay=0.5))
    assert later.on_death(0, 1) == 0.5
    assert later.on_death(1, 1) == 1.0
    assert later.on_death(100, 99) == 0.5  # ran long enough: back-off reset, old deaths aged out
