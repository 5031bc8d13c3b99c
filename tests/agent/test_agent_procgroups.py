"""agent/procgroups.py with real processes: records, pid-reuse checks, ending groups.

Every process started here is SIGKILLed by pid in ``finally`` if still alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import procgroups
from agent.procgroups import Groups, Target
from tests.agent.agent_procs import alive

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def started() -> Iterator[list[int]]:
    pids: list[int] = []
    try:
        yield pids
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def session(tmp: Path, started: list[int]) -> tuple[subprocess.Popen[bytes], int]:
    """A session-like group: a shell leader that leaves a background sleep behind."""
    bg = tmp / "bg.pid"
    proc = subprocess.Popen(["sh", "-c", f'sleep 600 & echo $! > "{bg}"; read x'],
                            stdin=subprocess.PIPE, start_new_session=True)
    started.append(proc.pid)
    deadline = time.monotonic() + 10
    while not (bg.exists() and bg.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    started.append(int(bg.read_text()))
    return proc, int(bg.read_text())


def test_a_group_stays_recorded_while_a_member_lives_and_end_all_ends_it(
        tmp_path: Path, started: list[int]) -> None:
    groups = Groups()
    groups.record_in(tmp_path / "sessions")
    proc, bg = session(tmp_path, started)
    groups.add(proc.pid)
    record = tmp_path / "sessions" / str(proc.pid)
    leader = procgroups.read_proc(proc.pid)
    assert leader is not None
    assert record.read_text() == f"{leader.start}\n"
    assert procgroups.recorded(tmp_path / "sessions") == [(record, Target(proc.pid,
                                                                         leader.start))]
    proc.communicate(b"\n", timeout=10)  # the leader exits, the background sleep stays
    groups.release(proc.pid)
    assert record.exists()
    assert alive(bg)
    groups.end_all(grace=2)
    assert not alive(bg)
    assert not record.exists()
    assert groups.targets() == []


def test_an_empty_group_is_forgotten(tmp_path: Path, started: list[int]) -> None:
    groups = Groups()
    groups.record_in(tmp_path)
    proc = subprocess.Popen(["true"], start_new_session=True)
    started.append(proc.pid)
    groups.add(proc.pid)
    proc.wait(10)
    groups.release(proc.pid)
    assert groups.targets() == []
    assert not (tmp_path / str(proc.pid)).exists()


def test_a_stale_record_never_signals_a_reused_pid(started: list[int]) -> None:
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    started.append(proc.pid)
    me = procgroups.read_proc(proc.pid)
    assert me is not None
    stale = Target(proc.pid, me.start + 1)  # "the same pid, but started at another time"
    assert not procgroups.matches(stale)
    procgroups.send([stale], signal.SIGKILL)
    time.sleep(0.1)
    assert alive(proc.pid)
    procgroups.end([Target(proc.pid, me.start)], grace=2)
    assert proc.wait(10) == -signal.SIGHUP


def test_descendants_follow_the_tree(tmp_path: Path, started: list[int]) -> None:
    proc, bg = session(tmp_path, started)
    found = {p.pid for p in procgroups.descendants(proc.pid)}
    assert found == {bg}
    assert proc.pid in {p.pid for p in procgroups.descendants(os.getpid())}
    proc.communicate(b"\n", timeout=10)
    procgroups.end([Target(bg, None, group=False)], grace=2)
    assert not alive(bg)
